//! `MixpanelConfig`: a Mixpanel connection's settings (no secrets).

use std::time::Duration;

use apex_connect_core::{Error, Result};
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::models::streams;
use crate::days::parse_tz;

/// Largest `window_days`.
pub const MAX_WINDOW_DAYS: u32 = 365;
/// Largest `attribution_window_days`.
pub const MAX_ATTRIBUTION_DAYS: u32 = 90;
/// Largest `page_size` (records per page of the events stream).
pub const MAX_PAGE_SIZE: u32 = 100_000;
/// Largest `engage_page_size`.
pub const MAX_ENGAGE_PAGE_SIZE: u32 = 10_000;
/// Largest `max_line_bytes` (one exported event).
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Where a Mixpanel project's data lives (chosen when the project was created). It chooses
/// every host the connector talks to, and only those hosts are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Region {
    /// United States (default): `data.mixpanel.com`, `mixpanel.com`.
    #[default]
    Us,
    /// European Union: `data-eu.mixpanel.com`, `eu.mixpanel.com`.
    Eu,
    /// India: `data-in.mixpanel.com`, `in.mixpanel.com`.
    In,
}

impl Region {
    /// The Raw Event Export host's base URL.
    pub fn export_base(self) -> &'static str {
        match self {
            Region::Us => "https://data.mixpanel.com",
            Region::Eu => "https://data-eu.mixpanel.com",
            Region::In => "https://data-in.mixpanel.com",
        }
    }

    /// The Query API host's base URL (engage, cohorts, funnels).
    pub fn query_base(self) -> &'static str {
        match self {
            Region::Us => "https://mixpanel.com",
            Region::Eu => "https://eu.mixpanel.com",
            Region::In => "https://in.mixpanel.com",
        }
    }

    /// `us`, `eu` or `in`.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Us => "us",
            Region::Eu => "eu",
            Region::In => "in",
        }
    }
}

/// The settings of a Mixpanel connection (serde; unknown settings are refused).
///
/// Secrets are not here: the service account's secret (`service_account_secret`) or the legacy
/// project API secret (`api_secret`) come from the connection's secrets.
///
/// # Examples
/// ```
/// use apex_connect_analytics::mixpanel::MixpanelConfig;
/// let cfg: MixpanelConfig = serde_json::from_value(serde_json::json!({
///     "project_id": 12345,
///     "service_account_username": "sync.1234.mp-service-account",
///     "region": "eu",
///     "project_timezone": "Europe/Paris",
/// })).unwrap();
/// cfg.validate().unwrap();
/// assert_eq!(cfg.attribution_window_days, 5);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MixpanelConfig {
    /// The project id. Required with a service account (sent as `project_id` on every call).
    pub project_id: Option<u64>,
    /// The workspace id, for projects with Data Views (sent as `workspace_id` to the Query API).
    pub workspace_id: Option<u64>,
    /// The service account's username; with it the `service_account_secret` secret is used
    /// (HTTP Basic `username:secret`). Without it, the legacy `api_secret` secret is.
    pub service_account_username: Option<String>,
    /// Data residency: `us` (default), `eu` or `in`.
    pub region: Region,
    /// For projects created before 1 January 2023: the project's time zone (IANA name). Such
    /// projects interpret `from_date`/`to_date` **and store event `time`** in this zone; the
    /// connector converts times to UTC with it. Unset: dates and times are UTC (newer projects).
    pub project_timezone: Option<String>,
    /// The first day exported (in the project's time zone). Default: 30 days before today.
    pub start_date: Option<NaiveDate>,
    /// Export up to this day instead of today (a bounded backfill).
    pub end_date: Option<NaiveDate>,
    /// Days re-exported by each incremental walk, ending with the last day exported (late
    /// events keep arriving: mobile clients send offline events days later). Default 5.
    pub attribution_window_days: u32,
    /// Days per export request (1..=365, default 30): one request per window, so a year's
    /// backfill is 13 queries of the 60 allowed per hour.
    pub window_days: u32,
    /// Records per page of the events stream (1..=100,000, default 10,000). One export
    /// request is read across as many pages as its window holds.
    pub page_size: u32,
    /// `page_size` of Engage queries (profiles and cohort members; 1..=10,000, default 1,000).
    pub engage_page_size: u32,
    /// The longest exported line read (default 1 MiB); a longer one is quarantined.
    pub max_line_bytes: usize,
    /// Export only these events (the `event` filter); empty: all.
    pub events: Vec<String>,
    /// Ask for a gzip-compressed export (default true).
    pub gzip: bool,
    /// Queries per hour allowed (default 60, Mixpanel's limit for both APIs).
    pub queries_per_hour: u32,
    /// Queries per second allowed (default 3).
    pub queries_per_second: u32,
    /// Concurrent export requests allowed (default 100).
    pub max_concurrent_exports: u32,
    /// Concurrent Query API requests allowed (default 5).
    pub max_concurrent_queries: u32,
    /// The longest a request waits for the rate limits before failing with `RateLimited`
    /// (seconds, default 900).
    pub max_wait_secs: u64,
    /// The longest one export request may take, headers to last line (seconds, default 3,600).
    pub export_timeout_secs: u64,
    /// The streams to offer (default all of [`streams::ALL`]).
    pub streams: Vec<String>,
    /// The funnels whose results are synced (ids); empty: every funnel of the project.
    pub funnel_ids: Vec<u64>,
}

impl Default for MixpanelConfig {
    fn default() -> Self {
        MixpanelConfig {
            project_id: None,
            workspace_id: None,
            service_account_username: None,
            region: Region::Us,
            project_timezone: None,
            start_date: None,
            end_date: None,
            attribution_window_days: 5,
            window_days: 30,
            page_size: 10_000,
            engage_page_size: 1_000,
            max_line_bytes: 1024 * 1024,
            events: Vec::new(),
            gzip: true,
            queries_per_hour: 60,
            queries_per_second: 3,
            max_concurrent_exports: 100,
            max_concurrent_queries: 5,
            max_wait_secs: 900,
            export_timeout_secs: 3_600,
            streams: streams::ALL.iter().map(|s| s.to_string()).collect(),
            funnel_ids: Vec::new(),
        }
    }
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &'static str,
    v: T,
    lo: T,
    hi: T,
) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::config("Mixpanel setting out of range")
            .with_context("setting", name)
            .with_context("value", v)
            .with_context("allowed", format!("{lo}..={hi}")));
    }
    Ok(())
}

impl MixpanelConfig {
    /// The project's time zone for dates and event times: the legacy `project_timezone`, or UTC.
    ///
    /// # Errors
    /// `Config` for an unknown zone name.
    pub fn timezone(&self) -> Result<Tz> {
        match &self.project_timezone {
            Some(name) => parse_tz("project_timezone", name),
            None => Ok(Tz::UTC),
        }
    }

    /// Whether event `time` is stored in the project's local time (pre-2023 projects).
    pub fn local_time(&self) -> bool {
        self.project_timezone.is_some()
    }

    /// `max_wait_secs` as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// `Config` naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        self.timezone()?;
        range("window_days", self.window_days, 1, MAX_WINDOW_DAYS)?;
        range(
            "attribution_window_days",
            self.attribution_window_days,
            0,
            MAX_ATTRIBUTION_DAYS,
        )?;
        range("page_size", self.page_size, 1, MAX_PAGE_SIZE)?;
        range(
            "engage_page_size",
            self.engage_page_size,
            1,
            MAX_ENGAGE_PAGE_SIZE,
        )?;
        range("max_line_bytes", self.max_line_bytes, 256, MAX_LINE_BYTES)?;
        range("queries_per_hour", self.queries_per_hour, 1, 1_000_000)?;
        range("queries_per_second", self.queries_per_second, 1, 10_000)?;
        range(
            "max_concurrent_exports",
            self.max_concurrent_exports,
            1,
            1_000,
        )?;
        range(
            "max_concurrent_queries",
            self.max_concurrent_queries,
            1,
            1_000,
        )?;
        range("max_wait_secs", self.max_wait_secs, 1, 86_400)?;
        range("export_timeout_secs", self.export_timeout_secs, 1, 86_400)?;
        if let (Some(s), Some(e)) = (self.start_date, self.end_date)
            && e < s
        {
            return Err(Error::config("Mixpanel end_date is before start_date")
                .with_context("start_date", s)
                .with_context("end_date", e));
        }
        if self.streams.is_empty() {
            return Err(Error::config("Mixpanel settings name no stream"));
        }
        for s in &self.streams {
            if !streams::ALL.contains(&s.as_str()) {
                return Err(Error::config("unknown Mixpanel stream")
                    .with_context("stream", s)
                    .with_context("known", streams::ALL.join(",")));
            }
        }
        if self.service_account_username.is_some() && self.project_id.is_none() {
            return Err(Error::config(
                "a Mixpanel service account needs the `project_id` setting",
            ));
        }
        if let Some(u) = &self.service_account_username
            && (u.is_empty() || u.contains(':'))
        {
            return Err(Error::config(
                "Mixpanel service_account_username must be non-empty and without `:`",
            ));
        }
        for e in &self.events {
            if e.is_empty() {
                return Err(Error::config("Mixpanel `events` holds an empty name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::ErrorKind;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        let c = MixpanelConfig::default();
        c.validate().unwrap();
        assert_eq!(c.timezone().unwrap(), Tz::UTC);
        let bad = [
            serde_json::json!({"window_days": 0}),
            serde_json::json!({"window_days": 400}),
            serde_json::json!({"page_size": 0}),
            serde_json::json!({"project_timezone": "Nowhere/City"}),
            serde_json::json!({"streams": ["deals"]}),
            serde_json::json!({"service_account_username": "a"}),
            serde_json::json!({"project_id": 1, "service_account_username": "a:b"}),
            serde_json::json!({"start_date": "2024-02-01", "end_date": "2024-01-01"}),
        ];
        for b in bad {
            let c: MixpanelConfig = serde_json::from_value(b.clone()).unwrap();
            assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::Config, "{b}");
        }
        assert!(
            serde_json::from_value::<MixpanelConfig>(serde_json::json!({"windw_days": 3})).is_err()
        );
        let c: MixpanelConfig =
            serde_json::from_value(serde_json::json!({"region": "in"})).unwrap();
        assert_eq!(c.region.export_base(), "https://data-in.mixpanel.com");
        assert_eq!(c.region.query_base(), "https://in.mixpanel.com");
    }
}
