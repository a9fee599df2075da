//! `Ga4Connector`: the [`Connector`] for one GA4 property.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use apex_connect_core::http::{Credentials, check_page_len};
use apex_connect_core::{
    Capabilities, Connector, ConnectorInfo, CursorToken, Entity, Error, ErrorKind, Page, RawJson,
    Record, Reject, Result, StreamId, StreamInfo, StreamSchema, SyncCursor, async_trait,
};
use bytes::Bytes;
use chrono::{Datelike, NaiveDate};
use chrono_tz::Tz;
use serde_json::{Value, json};

use super::api::Ga4Api;
use super::config::{FunnelSpec, Ga4Config};
use super::cursor::{CohortsCursor, FunnelsCursor, ReportCursor, ReportPosition};
use super::models::{
    self, FunnelAnswer, Metadata, ReportDef, ReportPage, Row, RowContext, id_from_parts, streams,
};
use super::{API_VERSION, NAME};
use crate::days::{self, WallClock};

/// The GA4 connector of one property.
///
/// Streams: the built-in reports (see [`streams`]), every report defined in the settings,
/// `funnels` when funnels are defined, and `cohorts`. Report streams are read in day windows
/// with `limit`/`offset` paging; each incremental walk re-reads the last `freshness_days`.
pub struct Ga4Connector {
    info: ConnectorInfo,
    config: Ga4Config,
    api: Ga4Api,
    tz: Tz,
    clock: WallClock,
    reports: BTreeMap<String, ReportDef>,
    metadata: tokio::sync::Mutex<Option<Arc<Metadata>>>,
}

impl fmt::Debug for Ga4Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ga4Connector")
            .field("config", &self.config)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Ga4Connector`].
pub struct Ga4ConnectorBuilder {
    config: Ga4Config,
    credentials: Option<Arc<dyn Credentials>>,
    oauth_refresh: bool,
    base_url: Option<String>,
    clock: WallClock,
    timeout: Option<std::time::Duration>,
}

impl fmt::Debug for Ga4ConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ga4ConnectorBuilder")
            .field("config", &self.config)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "[redacted]"),
            )
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Ga4ConnectorBuilder {
    /// Where the bearer token comes from: a [`apex_connect_core::TokenManager`] (JWT bearer
    /// for a service account, or a user's OAuth tokens), or a static token.
    pub fn credentials(mut self, credentials: Arc<dyn Credentials>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Says the credentials refresh (OAuth); claimed in the capabilities.
    pub fn oauth_refresh(mut self, on: bool) -> Self {
        self.oauth_refresh = on;
        self
    }

    /// Replaces the Data API's base URL (simulators, proxies).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The wall clock "today" and quota refills are read from (tests).
    pub fn clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// Bounds each HTTP attempt and its connect and header waits (default 60 s, 10 s, 30 s).
    pub fn http_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Validates and builds (no I/O).
    ///
    /// # Errors
    /// `Config` for bad settings, missing credentials or a bad base URL.
    pub fn build(self) -> Result<Ga4Connector> {
        self.config.validate()?;
        let credentials = self
            .credentials
            .ok_or_else(|| Error::config("GA4 needs credentials (OAuth or a token)"))?;
        let tz = self.config.timezone()?;
        let api = Ga4Api::new(
            &self.config,
            credentials,
            self.base_url.as_deref(),
            self.clock.clone(),
            self.timeout,
        )?;
        let mut reports = BTreeMap::new();
        for name in streams::BUILT_IN {
            if let Some(d) = ReportDef::built_in(name, &self.config) {
                reports.insert(name.to_string(), d);
            }
        }
        for spec in &self.config.reports {
            reports.insert(spec.name.clone(), ReportDef::from_spec(spec));
        }
        let infos: Vec<StreamInfo> = self
            .config
            .offered_streams()
            .iter()
            .map(|s| stream_info(s, reports.get(s)))
            .collect();
        let mut caps = Capabilities::new(infos);
        if self.oauth_refresh {
            caps = caps.with_oauth_refresh();
        }
        Ok(Ga4Connector {
            info: ConnectorInfo::new(NAME, API_VERSION, caps),
            config: self.config,
            api,
            tz,
            clock: self.clock,
            reports,
            metadata: tokio::sync::Mutex::new(None),
        })
    }
}

fn stream_info(name: &str, report: Option<&ReportDef>) -> StreamInfo {
    let id = StreamId::new(name.to_string());
    match (name, report) {
        (streams::FUNNELS, _) => StreamInfo::new(id, true)
            .with_key(["funnel", "date", "step"])
            .with_replication_key("date"),
        (streams::COHORTS, _) => StreamInfo::new(id, false).with_key(["cohort", "cohort_nth_week"]),
        (_, Some(def)) => {
            let mut key = vec!["date".to_string()];
            key.extend(
                def.dimensions
                    .iter()
                    .filter(|d| d.as_str() != "date")
                    .map(|d| format!("dimensions.{d}")),
            );
            StreamInfo::new(id, true)
                .with_key(key)
                .with_replication_key("date")
        }
        _ => StreamInfo::new(id, false),
    }
}

impl Ga4Connector {
    /// Starts building a connector for `config`.
    pub fn builder(config: Ga4Config) -> Ga4ConnectorBuilder {
        Ga4ConnectorBuilder {
            config,
            credentials: None,
            oauth_refresh: false,
            base_url: None,
            clock: days::system_clock(),
            timeout: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &Ga4Config {
        &self.config
    }

    /// The Data API (client, quota tracker).
    pub fn api(&self) -> &Ga4Api {
        &self.api
    }

    /// The report behind a report stream.
    pub fn report(&self, stream: &str) -> Option<&ReportDef> {
        self.reports.get(stream)
    }

    /// The last day to read: today in the property's time zone, or `end_date` if earlier.
    pub fn last_day(&self) -> NaiveDate {
        let today = days::today_in(self.tz, (self.clock)());
        self.config.end_date.map_or(today, |e| e.min(today))
    }

    /// The first day to read.
    pub fn start_day(&self) -> NaiveDate {
        self.config
            .start_date
            .unwrap_or_else(|| days::sub_days(self.last_day(), 29))
    }

    /// The property's metadata (`getMetadata`), fetched once per connector.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn metadata(&self) -> Result<Arc<Metadata>> {
        let mut m = self.metadata.lock().await;
        if let Some(m) = m.as_ref() {
            return Ok(m.clone());
        }
        let body = self.api.metadata().await?;
        let parsed = Arc::new(Metadata::parse(&body)?);
        *m = Some(parsed.clone());
        Ok(parsed)
    }

    fn offered(&self, stream: &StreamId) -> Result<()> {
        if self.info.stream(stream).is_some() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::NotFound, "unknown GA4 stream")
                .with_context("stream", stream))
        }
    }

    async fn read_report(&self, def: &ReportDef, cursor: Option<&CursorToken>) -> Result<Page> {
        let stream = StreamId::new(def.name.clone());
        let last = self.last_day();
        let start = self.start_day();
        let position = match cursor {
            None => ReportPosition::Window {
                from: start,
                to: None,
                offset: 0,
            },
            Some(t) => {
                let c = ReportCursor::from_token(t)?;
                if c.stream != def.name {
                    return Err(Error::invalid_input("cursor of another GA4 stream")
                        .with_context("cursor_stream", c.stream)
                        .with_context("stream", &def.name));
                }
                c.position
            }
        };
        let (from, to, offset) = match position {
            ReportPosition::CaughtUp { through } => (
                days::repull_from(through.min(last), self.config.freshness_days, start),
                None,
                0,
            ),
            ReportPosition::Window { from, to, offset } => (from, to, offset),
        };
        let done = |records: Vec<Record>, rejects: Vec<Reject>| {
            let next = ReportCursor::new(&def.name, ReportPosition::CaughtUp { through: last });
            Page::new(records, Some(next.to_token()), false).with_rejects(rejects)
        };
        if from > last {
            return Ok(done(Vec::new(), Vec::new()));
        }
        let to = to.unwrap_or_else(|| days::window_end(from, self.config.window_days, last));
        let limit = self.config.page_size;
        let body = self
            .api
            .run_report(&def.request(from, to, offset, limit))
            .await?;
        let page = ReportPage::parse(&body)?;
        if let Some(q) = &page.property_quota.0 {
            self.api.quota().observe(q, (self.clock)());
        }
        let dims = page.dimensions();
        let metrics = page.metrics();
        if !page.rows.is_empty() && (dims.len() != def.dimensions.len() || !dims.contains(&"date"))
        {
            return Err(Error::invalid_response(
                "GA4 answered other dimensions than the report asked for",
            )
            .with_context("stream", &def.name));
        }
        check_page_len(page.rows.len(), limit as usize)?;
        let quality = page.quality();
        let mut records = Vec::with_capacity(page.rows.len());
        let mut rejects = Vec::new();
        for raw in &page.rows {
            match models::report_record(
                &stream,
                &self.config.property_id,
                &dims,
                &metrics,
                raw,
                quality.as_ref(),
            ) {
                Ok(r) => records.push(r),
                Err(e) => rejects.push(Reject::unparsed(
                    stream.clone(),
                    None,
                    Bytes::copy_from_slice(raw.get().as_bytes()),
                    &e,
                )),
            }
        }
        let got = page.rows.len() as u64;
        let next_offset = offset.saturating_add(got);
        let total = page.row_count.0.unwrap_or(0);
        if got > 0 && next_offset < total {
            let next = ReportCursor::new(
                &def.name,
                ReportPosition::Window {
                    from,
                    to: Some(to),
                    offset: next_offset,
                },
            );
            return Ok(Page::new(records, Some(next.to_token()), true).with_rejects(rejects));
        }
        if to >= last {
            return Ok(done(records, rejects));
        }
        let next = ReportCursor::new(
            &def.name,
            ReportPosition::Window {
                from: days::add_days(to, 1),
                to: None,
                offset: 0,
            },
        );
        Ok(Page::new(records, Some(next.to_token()), true).with_rejects(rejects))
    }

    fn funnel_request(f: &FunnelSpec, day: NaiveDate) -> Value {
        json!({
            "dateRanges": [{"startDate": day.to_string(), "endDate": day.to_string()}],
            "funnel": {
                "isOpenFunnel": f.open,
                "steps": f.steps.iter().map(|s| json!({
                    "name": s.name,
                    "filterExpression": {"funnelEventFilter": {"eventName": s.event}},
                })).collect::<Vec<_>>(),
            },
            "returnPropertyQuota": true,
        })
    }

    async fn read_funnels(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let last = self.last_day();
        let start = self.start_day();
        let funnels = &self.config.funnels;
        let (index, walk_from, day) = match cursor.map(FunnelsCursor::from_token).transpose()? {
            Some(FunnelsCursor::Walk {
                index,
                walk_from,
                day,
            }) if index < funnels.len() => (index, walk_from, day),
            Some(FunnelsCursor::CaughtUp { through }) => {
                let from = days::repull_from(through.min(last), self.config.freshness_days, start);
                (0, from, from)
            }
            _ => (0, start, start),
        };
        let caught_up = |records, rejects| {
            Page::new(
                records,
                Some(FunnelsCursor::CaughtUp { through: last }.to_token()),
                false,
            )
            .with_rejects(rejects)
        };
        if funnels.is_empty() || day > last {
            return Ok(caught_up(Vec::new(), Vec::new()));
        }
        let funnel = &funnels[index];
        let body = self
            .api
            .run_funnel_report(&Self::funnel_request(funnel, day))
            .await?;
        let answer = FunnelAnswer::parse(&body)?;
        if let Some(q) = &answer.property_quota.0 {
            self.api.quota().observe(q, (self.clock)());
        }
        let stream = StreamId::from_static(streams::FUNNELS);
        let date = day.to_string();
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        if let Some(table) = &answer.table {
            let dims = table.dimensions();
            let metrics = table.metrics();
            let step_idx = dims.iter().position(|d| *d == "funnelStepName");
            for raw in &table.rows {
                let built = step_idx
                    .ok_or_else(|| {
                        Error::invalid_response("GA4 funnel table without funnelStepName")
                    })
                    .and_then(|si| {
                        let row = Row::parse(raw, dims.len(), metrics.len())?;
                        let step = row.dimensions[si].as_ref();
                        let id = id_from_parts([funnel.name.as_str(), date.as_str(), step]);
                        let ctx = RowContext {
                            property_id: &self.config.property_id,
                            report: streams::FUNNELS,
                            fields: &[("funnel", &funnel.name), ("date", &date), ("step", step)],
                            quality: None,
                        };
                        let raw = models::row_raw(
                            &ctx,
                            dims.iter()
                                .zip(row.dimensions.iter())
                                .enumerate()
                                .filter(|(i, _)| *i != si)
                                .map(|(_, (k, v))| (*k, Some(v.as_ref()))),
                            metrics
                                .iter()
                                .zip(row.metrics.iter())
                                .map(|(k, v)| (*k, v.as_deref())),
                        );
                        Ok(Record::upsert(stream.clone(), id, raw))
                    });
                match built {
                    Ok(r) => records.push(r),
                    Err(e) => rejects.push(Reject::unparsed(
                        stream.clone(),
                        None,
                        Bytes::copy_from_slice(raw.get().as_bytes()),
                        &e,
                    )),
                }
            }
        }
        let next = if day < last {
            FunnelsCursor::Walk {
                index,
                walk_from,
                day: days::add_days(day, 1),
            }
        } else if index + 1 < funnels.len() {
            FunnelsCursor::Walk {
                index: index + 1,
                walk_from,
                day: walk_from,
            }
        } else {
            return Ok(caught_up(records, rejects));
        };
        Ok(Page::new(records, Some(next.to_token()), true).with_rejects(rejects))
    }

    /// The weekly cohorts of the `cohorts` stream: the last `cohort_weeks` full weeks
    /// (Monday to Sunday) before the current one.
    pub fn cohort_weeks(&self) -> Vec<(String, NaiveDate, NaiveDate)> {
        let last = self.last_day();
        let monday = days::sub_days(last, u64::from(last.weekday().num_days_from_monday()));
        (1..=u64::from(self.config.cohort_weeks))
            .rev()
            .map(|k| {
                let start = days::sub_days(monday, 7 * k);
                (format!("week_{start}"), start, days::add_days(start, 6))
            })
            .collect()
    }

    async fn read_cohorts(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let c = match cursor {
            Some(t) => CohortsCursor::from_token(t)?,
            None => CohortsCursor {
                walks: 0,
                offset: 0,
            },
        };
        let weeks = self.cohort_weeks();
        let limit = self.config.page_size;
        let body = json!({
            "dimensions": [{"name": "cohort"}, {"name": "cohortNthWeek"}],
            "metrics": [{"name": "cohortActiveUsers"}, {"name": "cohortTotalUsers"}],
            "cohortSpec": {
                "cohorts": weeks.iter().map(|(name, s, e)| json!({
                    "name": name,
                    "dimension": "firstSessionDate",
                    "dateRange": {"startDate": s.to_string(), "endDate": e.to_string()},
                })).collect::<Vec<_>>(),
                "cohortsRange": {"granularity": "WEEKLY", "startOffset": 0, "endOffset": self.config.cohort_weeks},
            },
            "orderBys": [{"dimension": {"dimensionName": "cohort"}}, {"dimension": {"dimensionName": "cohortNthWeek"}}],
            "offset": c.offset.to_string(),
            "limit": limit.to_string(),
            "returnPropertyQuota": true,
        });
        let answer = self.api.run_report(&body).await?;
        let page = ReportPage::parse(&answer)?;
        if let Some(q) = &page.property_quota.0 {
            self.api.quota().observe(q, (self.clock)());
        }
        check_page_len(page.rows.len(), limit as usize)?;
        let stream = StreamId::from_static(streams::COHORTS);
        let dims = page.dimensions();
        let metrics = page.metrics();
        let ci = dims.iter().position(|d| *d == "cohort");
        let ni = dims.iter().position(|d| *d == "cohortNthWeek");
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        for raw in &page.rows {
            let built = match (ci, ni) {
                (Some(ci), Some(ni)) => Row::parse(raw, dims.len(), metrics.len()).map(|row| {
                    let cohort = row.dimensions[ci].as_ref();
                    let nth = row.dimensions[ni].as_ref();
                    let ctx = RowContext {
                        property_id: &self.config.property_id,
                        report: streams::COHORTS,
                        fields: &[("cohort", cohort), ("cohort_nth_week", nth)],
                        quality: None,
                    };
                    let raw = models::row_raw(
                        &ctx,
                        std::iter::empty(),
                        metrics
                            .iter()
                            .zip(row.metrics.iter())
                            .map(|(k, v)| (*k, v.as_deref())),
                    );
                    Record::upsert(stream.clone(), id_from_parts([cohort, nth]), raw)
                }),
                _ => Err(Error::invalid_response(
                    "GA4 cohort answer without the cohort dimensions",
                )),
            };
            match built {
                Ok(r) => records.push(r),
                Err(e) => rejects.push(Reject::unparsed(
                    stream.clone(),
                    None,
                    Bytes::copy_from_slice(raw.get().as_bytes()),
                    &e,
                )),
            }
        }
        let next_offset = c.offset.saturating_add(page.rows.len() as u64);
        let total = page.row_count.0.unwrap_or(0);
        let (next, more) = if !page.rows.is_empty() && next_offset < total {
            (
                CohortsCursor {
                    walks: c.walks,
                    offset: next_offset,
                },
                true,
            )
        } else {
            (
                CohortsCursor {
                    walks: c.walks.saturating_add(1),
                    offset: 0,
                },
                false,
            )
        };
        Ok(Page::new(records, Some(next.to_token()), more).with_rejects(rejects))
    }
}

#[async_trait]
impl Connector for Ga4Connector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    /// Reads the property's metadata (cheap; also proves the property is readable).
    async fn check(&self) -> Result<()> {
        self.api.metadata().await.map(|_| ())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        self.offered(stream)?;
        match stream.as_str() {
            streams::FUNNELS => self.read_funnels(cursor).await,
            streams::COHORTS => self.read_cohorts(cursor).await,
            name => match self.reports.get(name) {
                Some(def) => self.read_report(def, cursor).await,
                None => Err(Error::new(ErrorKind::NotFound, "unknown GA4 stream")
                    .with_context("stream", stream)),
            },
        }
    }

    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        models::entity(record).map(Some)
    }

    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        let _ = parent;
        self.offered(stream)?;
        let dims = self
            .reports
            .get(stream.as_str())
            .map(|d| d.dimensions.clone())
            .unwrap_or_default();
        let id = models::built_record_id(stream.as_str(), raw.as_bytes(), &dims)?;
        Ok(Record::upsert(stream.clone(), id, raw.clone()))
    }

    /// The schema of a stream, with the property's descriptions of its dimensions and
    /// metrics (`getMetadata`, one call per connector); `custom_fields` lists the property's
    /// custom dimensions and metrics the stream reads.
    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let info = self.info.stream(stream).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "unknown GA4 stream").with_context("stream", stream)
        })?;
        let meta = self.metadata().await?;
        let (props, used): (_, Vec<String>) = match stream.as_str() {
            streams::FUNNELS => (
                models::report_schema(
                    &[],
                    &[
                        "activeUsers".into(),
                        "funnelStepCompletionRate".into(),
                        "funnelStepAbandonments".into(),
                        "funnelStepAbandonmentRate".into(),
                    ],
                    &["funnel", "date", "step"],
                    Some(&meta),
                ),
                Vec::new(),
            ),
            streams::COHORTS => (
                models::report_schema(
                    &[],
                    &["cohortActiveUsers".into(), "cohortTotalUsers".into()],
                    &["cohort", "cohort_nth_week"],
                    Some(&meta),
                ),
                Vec::new(),
            ),
            name => {
                let def = self.reports.get(name).ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "unknown GA4 stream")
                        .with_context("stream", stream)
                })?;
                let custom = meta.custom();
                let used = def
                    .dimensions
                    .iter()
                    .chain(&def.metrics)
                    .filter(|n| custom.contains(n))
                    .cloned()
                    .collect();
                (
                    models::report_schema(&def.dimensions, &def.metrics, &["date"], Some(&meta)),
                    used,
                )
            }
        };
        let mut schema = StreamSchema::new(info, props).with_custom_fields(used);
        if let Some(obj) = schema.schema.as_object_mut() {
            obj.insert(
                "required".into(),
                json!(["property_id", "report", "dimensions", "metrics"]),
            );
        }
        Ok(schema)
    }
}
