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
        self.sim.expected(stream, self.start_day(), self.sim.today())
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
