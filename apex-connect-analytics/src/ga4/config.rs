//! `Ga4Config`: a GA4 connection's settings (no secrets), and the reports they define.

use std::time::Duration;

use apex_connect_core::{Error, Result};
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::models::streams;
use crate::days::parse_tz;

/// Most dimensions in one Data API request.
pub const MAX_DIMENSIONS: usize = 9;
/// Most metrics in one Data API request.
pub const MAX_METRICS: usize = 10;
/// Largest `page_size` (`limit` of one request; the API accepts 250,000).
pub const MAX_PAGE_SIZE: u32 = 250_000;

/// A report defined in the settings: its stream is named `name`.
///
/// Every report is broken down by `date` (added first when not listed), so its rows are daily
/// and upsert by (report, date, dimension values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ReportSpec {
    /// The stream's name (`[a-z0-9_]`, not a built-in stream's).
    pub name: String,
    /// Dimension API names (`country`, `customEvent:plan`, ...).
    pub dimensions: Vec<String>,
    /// Metric API names (`activeUsers`, `customEvent:order_value`, ...).
    pub metrics: Vec<String>,
    /// A Data API `FilterExpression` on dimensions, as JSON.
    #[serde(default)]
    pub dimension_filter: Option<Value>,
    /// A Data API `FilterExpression` on metrics, as JSON.
    #[serde(default)]
    pub metric_filter: Option<Value>,
}

/// One step of a funnel: users who logged `event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FunnelStep {
    /// The step's name in the report.
    pub name: String,
    /// The event that completes the step.
    pub event: String,
}

/// A funnel defined in the settings (read with `runFunnelReport`, Data API v1alpha).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FunnelSpec {
    /// The funnel's name (part of its records' ids).
    pub name: String,
    /// Its steps, in order (2 or more).
    pub steps: Vec<FunnelStep>,
    /// An open funnel (users may enter at any step); default closed.
    #[serde(default)]
    pub open: bool,
}

/// The settings of a GA4 connection (serde; unknown settings are refused). Credentials come
/// from the shared authentication settings and secrets (service-account key file, or OAuth).
///
/// # Examples
/// ```
/// use apex_connect_analytics::ga4::Ga4Config;
/// let cfg: Ga4Config = serde_json::from_value(serde_json::json!({
///     "property_id": "123456789",
///     "reports": [{"name": "by_country", "dimensions": ["country"], "metrics": ["activeUsers"]}],
/// })).unwrap();
/// cfg.validate().unwrap();
/// assert_eq!(cfg.freshness_days, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Ga4Config {
    /// The GA4 property id (digits).
    pub property_id: String,
    /// The property's reporting time zone (IANA name; default UTC): "today" is read in it.
    pub property_timezone: Option<String>,
    /// The first day read. Default: 30 days before today.
    pub start_date: Option<NaiveDate>,
    /// Read up to this day instead of today.
    pub end_date: Option<NaiveDate>,
    /// Days re-read by each incremental walk, ending with the last day read (GA4 keeps
    /// processing recent days). Default 3.
    pub freshness_days: u32,
    /// Days per request (1..=366, default 30).
    pub window_days: u32,
    /// Rows per request (`limit`, 1..=250,000, default 10,000).
    pub page_size: u32,
    /// The streams to offer; `None`: every built-in stream, every report and `funnels` when
    /// funnels are defined.
    pub streams: Option<Vec<String>>,
    /// User-defined reports (each its own stream).
    pub reports: Vec<ReportSpec>,
    /// Funnels (stream `funnels`).
    pub funnels: Vec<FunnelSpec>,
    /// Weekly acquisition cohorts in the `cohorts` stream (1..=12, default 6).
    pub cohort_weeks: u32,
    /// The dimension the `sessions` stream breaks sessions down by (default
    /// `sessionDefaultChannelGroup`).
    pub sessions_dimension: String,
    /// The metric the `conversions` stream counts (default `keyEvents`, formerly
    /// `conversions`).
    pub conversions_metric: String,
    /// Concurrent requests (default 10, the standard property quota).
    pub max_concurrent: u32,
    /// Tokens kept in reserve: a request is not sent when fewer remain in the hour or day
    /// (default 0: the most tokens one request has cost so far).
    pub token_reserve: u32,
    /// The longest a request waits for a quota to refill before failing with `RateLimited`
    /// (seconds, default 900).
    pub max_wait_secs: u64,
}

impl Default for Ga4Config {
    fn default() -> Self {
        Ga4Config {
            property_id: String::new(),
            property_timezone: None,
            start_date: None,
            end_date: None,
            freshness_days: 3,
            window_days: 30,
            page_size: 10_000,
            streams: None,
            reports: Vec::new(),
            funnels: Vec::new(),
            cohort_weeks: 6,
            sessions_dimension: "sessionDefaultChannelGroup".to_string(),
            conversions_metric: "keyEvents".to_string(),
            max_concurrent: 10,
            token_reserve: 0,
            max_wait_secs: 900,
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
        return Err(Error::config("GA4 setting out of range")
            .with_context("setting", name)
            .with_context("value", v)
            .with_context("allowed", format!("{lo}..={hi}")));
    }
    Ok(())
}

fn api_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 200
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

impl Ga4Config {
    /// The property's time zone.
    ///
    /// # Errors
    /// `Config` for an unknown zone name.
    pub fn timezone(&self) -> Result<Tz> {
        match &self.property_timezone {
            Some(n) => parse_tz("property_timezone", n),
            None => Ok(Tz::UTC),
        }
    }

    /// `max_wait_secs` as a duration.
    pub fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    /// Every stream these settings can offer.
    pub fn available_streams(&self) -> Vec<String> {
        let mut out: Vec<String> = streams::BUILT_IN.iter().map(|s| s.to_string()).collect();
        out.extend(self.reports.iter().map(|r| r.name.clone()));
        if !self.funnels.is_empty() {
            out.push(streams::FUNNELS.to_string());
        }
        out
    }

    /// The streams offered (`streams`, or every available one).
    pub fn offered_streams(&self) -> Vec<String> {
        self.streams
            .clone()
            .unwrap_or_else(|| self.available_streams())
    }

    /// Checks every value.
    ///
    /// # Errors
    /// `Config` naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        if self.property_id.is_empty()
            || self.property_id.len() > 20
            || !self.property_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(
                Error::config("GA4 property_id must be the property's number")
                    .with_context("setting", "property_id"),
            );
        }
        self.timezone()?;
        range("freshness_days", self.freshness_days, 0, 90)?;
        range("window_days", self.window_days, 1, 366)?;
        range("page_size", self.page_size, 1, MAX_PAGE_SIZE)?;
        range("cohort_weeks", self.cohort_weeks, 1, 12)?;
        range("max_concurrent", self.max_concurrent, 1, 1_000)?;
        range("max_wait_secs", self.max_wait_secs, 1, 86_400)?;
        if let (Some(s), Some(e)) = (self.start_date, self.end_date)
            && e < s
        {
            return Err(Error::config("GA4 end_date is before start_date"));
        }
        for name in [&self.sessions_dimension, &self.conversions_metric] {
            if !api_name_ok(name) {
                return Err(Error::config("not a GA4 API name").with_context("value", name));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.reports {
            if r.name.is_empty()
                || r.name.len() > 64
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(Error::config("a GA4 report name must be [a-z0-9_]{1,64}")
                    .with_context("report", &r.name));
            }
            if streams::BUILT_IN.contains(&r.name.as_str())
                || r.name == streams::FUNNELS
                || !names.insert(r.name.clone())
            {
                return Err(Error::config(
                    "GA4 report name taken (a built-in stream or another report)",
                )
                .with_context("report", &r.name));
            }
            let dims = r.dimensions.iter().filter(|d| d.as_str() != "date").count() + 1;
            if dims > MAX_DIMENSIONS || r.metrics.is_empty() || r.metrics.len() > MAX_METRICS {
                return Err(Error::config(
                    "a GA4 report has 1 to 10 metrics and at most 9 dimensions (date included)",
                )
                .with_context("report", &r.name));
            }
            for n in r.dimensions.iter().chain(&r.metrics) {
                if !api_name_ok(n) {
                    return Err(Error::config("not a GA4 API name")
                        .with_context("report", &r.name)
                        .with_context("value", n));
                }
            }
            for f in [&r.dimension_filter, &r.metric_filter]
                .into_iter()
                .flatten()
            {
                if !f.is_object() {
                    return Err(
                        Error::config("a GA4 report filter is a FilterExpression object")
                            .with_context("report", &r.name),
                    );
                }
            }
        }
        let mut funnels = std::collections::BTreeSet::new();
        for f in &self.funnels {
            if f.name.is_empty() || f.name.contains('/') || !funnels.insert(f.name.clone()) {
                return Err(Error::config(
                    "GA4 funnel names must be unique, non-empty, without `/`",
                )
                .with_context("funnel", &f.name));
            }
            if f.steps.len() < 2
                || f.steps
                    .iter()
                    .any(|s| s.name.is_empty() || !api_name_ok(&s.event))
            {
                return Err(Error::config(
                    "a GA4 funnel has 2 or more steps, each with a name and an event",
                )
                .with_context("funnel", &f.name));
            }
        }
        let available = self.available_streams();
        if let Some(list) = &self.streams {
            if list.is_empty() {
                return Err(Error::config("GA4 settings name no stream"));
            }
            for s in list {
                if !available.contains(s) {
                    return Err(Error::config("unknown GA4 stream")
                        .with_context("stream", s)
                        .with_context("available", available.join(",")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::ErrorKind;

    fn base() -> serde_json::Value {
        serde_json::json!({"property_id": "123"})
    }

    #[test]
    fn validates_reports_funnels_and_streams() {
        let c: Ga4Config = serde_json::from_value(base()).unwrap();
        c.validate().unwrap();
        assert_eq!(c.offered_streams().len(), streams::BUILT_IN.len());
        let with = |patch: serde_json::Value| {
            let mut v = base();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            serde_json::from_value::<Ga4Config>(v).unwrap()
        };
        let good = with(serde_json::json!({
            "reports": [{"name": "by_country", "dimensions": ["country"], "metrics": ["activeUsers"],
                          "dimension_filter": {"filter": {"fieldName": "country", "stringFilter": {"value": "France"}}}}],
            "funnels": [{"name": "signup", "steps": [{"name": "Visit", "event": "page_view"}, {"name": "Sign up", "event": "sign_up"}]}],
        }));
        good.validate().unwrap();
        assert!(good.offered_streams().contains(&"by_country".to_string()));
        assert!(good.offered_streams().contains(&"funnels".to_string()));
        for bad in [
            serde_json::json!({"property_id": "properties/123"}),
            serde_json::json!({"reports": [{"name": "pages", "dimensions": [], "metrics": ["x"]}]}),
            serde_json::json!({"reports": [{"name": "Bad Name", "dimensions": [], "metrics": ["x"]}]}),
            serde_json::json!({"reports": [{"name": "r", "dimensions": [], "metrics": []}]}),
            serde_json::json!({"reports": [{"name": "r", "dimensions": ["a","b","c","d","e","f","g","h","i"], "metrics": ["x"]}]}),
            serde_json::json!({"reports": [{"name": "r", "dimensions": ["a b"], "metrics": ["x"]}]}),
            serde_json::json!({"funnels": [{"name": "f", "steps": [{"name": "a", "event": "x"}]}]}),
            serde_json::json!({"streams": ["nope"]}),
            serde_json::json!({"page_size": 0}),
            serde_json::json!({"property_timezone": "Nowhere"}),
        ] {
            let c = with(bad.clone());
            assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::Config, "{bad}");
        }
        assert!(
            serde_json::from_value::<Ga4Config>(serde_json::json!({"propertyid": "1"})).is_err()
        );
    }
}
