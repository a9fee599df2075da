//! Fixtures: a connector wired to a fresh simulator, for the conformance suite and the tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_analytics::days::WallClock;
use apex_connect_analytics::mixpanel::sim::{MixpanelSim, MixpanelSimConfig, MixpanelSimHandle};
use apex_connect_analytics::mixpanel::{MixpanelAuth, MixpanelConfig, MixpanelConnector};
use apex_connect_core::{Connector, StreamId, async_trait};
use apex_connect_testkit::conformance::ConformanceFixture;
use chrono::NaiveDate;

/// Noon UTC of `day`.
pub fn noon(day: NaiveDate) -> SystemTime {
    let secs = day.and_hms_opt(12, 0, 0).unwrap().and_utc().timestamp();
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

/// A clock whose day tests move.
#[derive(Clone)]
pub struct DayClock(pub Arc<Mutex<NaiveDate>>);

impl DayClock {
    pub fn new(day: NaiveDate) -> Self {
        DayClock(Arc::new(Mutex::new(day)))
    }
    pub fn set(&self, day: NaiveDate) {
        *self.0.lock().unwrap() = day;
    }
    pub fn clock(&self) -> WallClock {
        let cell = self.0.clone();
        Arc::new(move || noon(*cell.lock().unwrap()))
    }
}

pub struct MixpanelFixture {
    pub sim: MixpanelSimHandle,
    pub config: MixpanelConfig,
    pub day: DayClock,
}

impl MixpanelFixture {
    pub async fn start() -> Self {
        Self::with(MixpanelSimConfig::default(), |_| {}).await
    }

    /// A simulator with `sim` and a connector configuration adjusted by `tweak`.
    pub async fn with(sim: MixpanelSimConfig, tweak: impl FnOnce(&mut MixpanelConfig)) -> Self {
        let sim = MixpanelSim::start(sim).await.unwrap();
        let c = sim.config();
        let mut config: MixpanelConfig = serde_json::from_value(serde_json::json!({
            "project_id": c.project_id,
            "service_account_username": c.service_account.0,
            "start_date": c.first_day().to_string(),
            "window_days": 4,
            "page_size": 97,
            "engage_page_size": 25,
            "queries_per_hour": 1_000_000,
            "queries_per_second": 10_000,
            "max_wait_secs": 30,
        }))
        .unwrap();
        if let Some(tz) = c.project_timezone {
            config.project_timezone = Some(tz.name().to_string());
        }
        tweak(&mut config);
        let day = DayClock::new(c.today);
        MixpanelFixture { sim, config, day }
    }

    pub fn auth(&self) -> MixpanelAuth {
        let (u, s) = &self.sim.config().service_account;
        MixpanelAuth::ServiceAccount {
            username: u.clone(),
            secret: s.clone().into(),
        }
    }

    pub fn mixpanel(&self) -> MixpanelConnector {
        MixpanelConnector::builder(self.config.clone())
            .auth(self.auth())
            .base_url(self.sim.base_url())
            .clock(self.day.clock())
            .build()
            .unwrap()
    }

    /// Moves today for the simulator and the connectors.
    pub fn set_today(&self, day: NaiveDate) {
        self.sim.set_today(day);
        self.day.set(day);
    }

    pub fn start_day(&self) -> NaiveDate {
        self.config.start_date.unwrap()
    }

    pub fn expected_now(&self, stream: &str) -> BTreeMap<String, Option<i64>> {
        self.sim
            .expected(stream, self.start_day(), self.sim.today())
    }
}

#[async_trait]
impl ConformanceFixture for MixpanelFixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        Arc::new(self.mixpanel())
    }

    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.expected_now(stream.as_str())
    }

    async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
        self.sim.inject_rate_limit(retry_after.as_secs());
        Some(())
    }

    async fn rate_limited_seen(&self) -> Option<u64> {
        Some(self.sim.rate_limited_seen())
    }

    async fn secrets(&self) -> Option<Vec<String>> {
        let c = self.sim.config();
        Some(vec![c.service_account.1.clone(), c.api_secret.clone()])
    }

    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        Some(self.sim.inject_hostile(stream.as_str(), seed))
    }
}

use apex_connect_analytics::ga4::models::ReportDef;
use apex_connect_analytics::ga4::sim::{Ga4Sim, Ga4SimConfig, Ga4SimHandle};
use apex_connect_analytics::ga4::{Ga4Config, Ga4Connector, PLATFORM as GA4};
use apex_connect_core::platform::{
    AuthInputs, BuildContext, Platform, Secrets, Settings, resolve_auth,
};
use apex_connect_core::{ConnectionId, MemoryTokenStore, StaticToken};

pub struct Ga4Fixture {
    pub sim: Ga4SimHandle,
    pub settings: Settings,
}

impl Ga4Fixture {
    pub async fn start() -> Self {
        Self::with(Ga4SimConfig::default(), |_| {}).await
    }

    /// A simulator with `sim` and the connection's settings adjusted by `tweak`.
    pub async fn with(sim: Ga4SimConfig, tweak: impl FnOnce(&mut serde_json::Value)) -> Self {
        let sim = Ga4Sim::start(sim).await.unwrap();
        let c = sim.config();
        let mut settings = serde_json::json!({
            "property_id": c.property_id,
            "start_date": c.first_day().to_string(),
            "end_date": c.today.to_string(),
            "window_days": 4,
            "page_size": 7,
            "cohort_weeks": 3,
            "reports": [{
                "name": "by_country",
                "dimensions": ["country", "deviceCategory"],
                "metrics": ["activeUsers", "customEvent:order_value"],
            }],
            "funnels": [{
                "name": "signup",
                "steps": [
                    {"name": "Visit", "event": "page_view"},
                    {"name": "Sign up", "event": "sign_up"},
                    {"name": "Purchase", "event": "purchase"},
                ],
            }],
        });
        tweak(&mut settings);
        Ga4Fixture {
            settings: Settings::from_value(settings).unwrap(),
            sim,
        }
    }

    pub fn secrets(&self) -> Secrets {
        Secrets::from_values([("service_account_json", self.sim.service_account_json())])
    }

    /// A connector built as a host builds it: the descriptor, with core's `resolve_auth`
    /// turning the service-account key file into a JWT-bearer token manager.
    pub fn built(&self) -> Arc<dyn Connector> {
        let id = ConnectionId::from_static("ga4");
        let secrets = self.secrets();
        let auth = resolve_auth(
            &GA4,
            &self.settings,
            AuthInputs::new(&id, &secrets, Arc::new(MemoryTokenStore::new())),
        )
        .unwrap();
        let ctx = BuildContext::new(&id, &self.settings, &secrets, auth)
            .with_base_url(Some(self.sim.base_url()));
        GA4.build(&ctx).unwrap()
    }

    pub fn config(&self) -> Ga4Config {
        self.settings.parse().unwrap()
    }

    /// A typed connector with a static token (for what only the type offers).
    pub fn typed(&self, tweak: impl FnOnce(&mut Ga4Config)) -> Ga4Connector {
        let mut config = self.config();
        tweak(&mut config);
        Ga4Connector::builder(config)
            .credentials(Arc::new(StaticToken::bearer(self.sim.issue_access_token())))
            .base_url(self.sim.base_url())
            .build()
            .unwrap()
    }

    pub fn report_def(&self, stream: &str) -> Option<ReportDef> {
        let config = self.config();
        ReportDef::built_in(stream, &config).or_else(|| {
            config
                .reports
                .iter()
                .find(|r| r.name == stream)
                .map(ReportDef::from_spec)
        })
    }

    pub fn expected_now(&self, stream: &str) -> BTreeMap<String, Option<i64>> {
        let config = self.config();
        let start = config.start_date.unwrap();
        let last = config.end_date.unwrap().min(self.sim.today());
        match stream {
            "funnels" => {
                let f: Vec<(String, Vec<String>)> = config
                    .funnels
                    .iter()
                    .map(|f| {
                        (
                            f.name.clone(),
                            f.steps.iter().map(|s| s.name.clone()).collect(),
                        )
                    })
                    .collect();
                self.sim.expected_funnels(&f, start, last)
            }
            "cohorts" => {
                let weeks: Vec<String> = self
                    .typed(|_| {})
                    .cohort_weeks()
                    .into_iter()
                    .map(|w| w.0)
                    .collect();
                self.sim.expected_cohorts(&weeks, config.cohort_weeks)
            }
            other => {
                let def = self.report_def(other).unwrap();
                self.sim.expected_report(&def.dimensions, start, last)
            }
        }
    }
}

#[async_trait]
impl ConformanceFixture for Ga4Fixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        self.built()
    }

    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.expected_now(stream.as_str())
    }

    async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
        self.sim.inject_rate_limit(retry_after.as_secs());
        Some(())
    }

    async fn rate_limited_seen(&self) -> Option<u64> {
        Some(self.sim.rate_limited_seen())
    }

    async fn inject_unauthorized_once(&self) -> Option<()> {
        self.sim.expire_tokens();
        Some(())
    }

    async fn token_refreshes(&self) -> Option<u64> {
        Some(self.sim.token_grants())
    }

    async fn secrets(&self) -> Option<Vec<String>> {
        Some(vec![
            apex_connect_analytics::ga4::sim::TEST_PRIVATE_KEY_PEM.to_string(),
            self.sim.service_account_json(),
        ])
    }

    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        let s = stream.as_str();
        let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Some(match s {
            "funnels" => self.sim.inject_hostile(
                s,
                &strings(&["funnelStepName"]),
                &strings(&[
                    "activeUsers",
                    "funnelStepCompletionRate",
                    "funnelStepAbandonments",
                    "funnelStepAbandonmentRate",
                ]),
                seed,
                Some("signup"),
            ),
            "cohorts" => self.sim.inject_hostile(
                s,
                &strings(&["cohort", "cohortNthWeek"]),
                &strings(&["cohortActiveUsers", "cohortTotalUsers"]),
                seed,
                None,
            ),
            other => {
                let def = self.report_def(other)?;
                self.sim
                    .inject_hostile(s, &def.dimensions, &def.metrics, seed, None)
            }
        })
    }
}
