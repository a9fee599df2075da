//! `MixpanelConnector`: the [`Connector`] for one Mixpanel project.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use apex_connect_core::{
    Capabilities, Connector, ConnectorInfo, CursorToken, Entity, Error, ErrorKind, Page, RawJson,
    Record, Reject, Result, StreamId, StreamInfo, StreamSchema, SyncCursor, async_trait,
};
use bytes::Bytes;
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::api::{
    COHORTS_PATH, ExportLine, ExportLines, FUNNELS_LIST_PATH, FUNNELS_PATH, MixpanelApi,
    MixpanelAuth,
};
use super::config::MixpanelConfig;
use super::cursor::{
    CohortMembersCursor, CohortsCursor, DayPosition, EngagePosition, EventsCursor,
    FunnelResultsCursor, FunnelsCursor, ListCursor, MAX_LISTED, ProfilesCursor,
};
use super::models::{self, EventTime, streams};
use super::{API_VERSION, NAME};
use crate::days::{self, WallClock};

/// Most keys a run's deduplication set holds per window (16 bytes each, about 9 MB with the
/// table's overhead); past it the set starts again. Duplicates it misses still carry the same
/// record id, so sinks upsert them.
pub const MAX_DEDUPE_KEYS: usize = 450_000;

/// The line Mixpanel writes when it cut an export short.
const TERMINATED_EARLY: &[u8] = b"terminated early";

/// An export being read across several `read` calls: the engine reads the next page with the
/// cursor this connector returned, and the open response continues from there.
struct LiveExport {
    /// The cursor token whose read continues this export.
    token: String,
    lines: ExportLines,
    /// Keys of the events of this window already returned.
    seen: HashSet<u128>,
}

/// The Mixpanel connector of one project.
///
/// Streams: see [`streams`]. `events` reads the Raw Event Export line by line as it arrives
/// (one request per day window, read across as many pages as the window holds); the Query API
/// streams read `engage`, `cohorts/list` and `funnels`.
///
/// # Examples
/// ```no_run
/// # fn demo() -> apex_connect_core::Result<()> {
/// use apex_connect_analytics::mixpanel::{MixpanelAuth, MixpanelConfig, MixpanelConnector};
/// let config: MixpanelConfig = serde_json::from_value(serde_json::json!({
///     "project_id": 12345, "service_account_username": "sync.mp-service-account",
/// })).unwrap();
/// let connector = MixpanelConnector::builder(config)
///     .auth(MixpanelAuth::ServiceAccount {
///         username: "sync.mp-service-account".into(),
///         secret: std::env::var("MIXPANEL_SECRET").unwrap().into(),
///     })
///     .build()?;
/// # let _ = connector; Ok(()) }
/// ```
pub struct MixpanelConnector {
    info: ConnectorInfo,
    config: MixpanelConfig,
    api: MixpanelApi,
    tz: Tz,
    time: EventTime,
    clock: WallClock,
    live: tokio::sync::Mutex<Option<LiveExport>>,
}

impl fmt::Debug for MixpanelConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixpanelConnector")
            .field("config", &self.config)
            .field("api", &self.api)
            .field("tz", &self.tz)
            .finish_non_exhaustive()
    }
}

/// Builds a [`MixpanelConnector`].
pub struct MixpanelConnectorBuilder {
    config: MixpanelConfig,
    auth: Option<MixpanelAuth>,
    base_url: Option<String>,
    clock: WallClock,
}

impl fmt::Debug for MixpanelConnectorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixpanelConnectorBuilder")
            .field("config", &self.config)
            .field("auth", &self.auth)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl MixpanelConnectorBuilder {
    /// The credentials.
    pub fn auth(mut self, auth: MixpanelAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Replaces both of the region's hosts (simulators, proxies).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The wall clock "today" is read from (tests).
    pub fn clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// Validates and builds (no I/O).
    ///
    /// # Errors
    /// `Config` for bad settings, missing credentials or a bad base URL.
    pub fn build(self) -> Result<MixpanelConnector> {
        self.config.validate()?;
        let auth = self.auth.ok_or_else(|| {
            Error::config("Mixpanel needs credentials: a service account or the project API secret")
        })?;
        if matches!(auth, MixpanelAuth::ServiceAccount { .. }) && self.config.project_id.is_none() {
            return Err(Error::config(
                "a Mixpanel service account needs the `project_id` setting",
            ));
        }
        let tz = self.config.timezone()?;
        let api = MixpanelApi::new(&self.config, &auth, self.base_url.as_deref())?;
        let stream_infos = self.config.streams.iter().map(|s| stream_info(s)).collect();
        Ok(MixpanelConnector {
            info: ConnectorInfo::new(NAME, API_VERSION, Capabilities::new(stream_infos)),
            time: EventTime {
                local_tz: self.config.local_time().then_some(tz),
            },
            tz,
            api,
            config: self.config,
            clock: self.clock,
            live: tokio::sync::Mutex::new(None),
        })
    }
}

fn stream_info(name: &str) -> StreamInfo {
    let id = StreamId::new(name.to_string());
    match name {
        // The record id is a hash of Mixpanel's deduplication key, these four fields.
        streams::EVENTS => StreamInfo::new(id, true)
            .with_key([
                "event",
                "properties.distinct_id",
                "properties.time",
                "properties.$insert_id",
            ])
            .with_replication_key("properties.time"),
        streams::FUNNEL_RESULTS => StreamInfo::new(id, true)
            .with_key(["funnel_id", "date"])
            .with_replication_key("date"),
        streams::PROFILES => StreamInfo::new(id, false).with_key(["$distinct_id"]),
        // `cohort_id` is the record's parent (Engage does not repeat it in each member).
        streams::COHORT_MEMBERS => {
            StreamInfo::new(id, false).with_key(["cohort_id", "$distinct_id"])
        }
        streams::FUNNELS => StreamInfo::new(id, false).with_key(["funnel_id"]),
        _ => StreamInfo::new(id, false).with_key(["id"]),
    }
}

/// An Engage answer: `results` as raw slices of the body, and its paging fields.
#[derive(Deserialize)]
struct EngagePage<'a> {
    #[serde(borrow, default)]
    results: Vec<&'a RawValue>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    page: apex_connect_core::lenient::LenientU64,
    #[serde(default)]
    page_size: apex_connect_core::lenient::LenientU64,
    #[serde(default)]
    total: apex_connect_core::lenient::LenientU64,
}

/// The most pages one Engage walk may take beyond what its `total` announces.
const ENGAGE_SLACK_PAGES: u64 = 2;

struct EngageRead {
    items: Vec<(Result<String>, RawJson, Bytes)>,
    next: Option<EngagePosition>,
}

fn trim_line(b: &Bytes) -> Bytes {
    let s: &[u8] = b;
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.slice(start..end.max(start))
}

impl MixpanelConnector {
    /// Starts building a connector for `config`.
    pub fn builder(config: MixpanelConfig) -> MixpanelConnectorBuilder {
        MixpanelConnectorBuilder {
            config,
            auth: None,
            base_url: None,
            clock: days::system_clock(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &MixpanelConfig {
        &self.config
    }

    /// The HTTP API (clients, gates).
    pub fn api(&self) -> &MixpanelApi {
        &self.api
    }

    /// The last day to export: today in the project's time zone, or `end_date` if earlier.
    pub fn last_day(&self) -> NaiveDate {
        let today = days::today_in(self.tz, (self.clock)());
        match self.config.end_date {
            Some(e) => e.min(today),
            None => today,
        }
    }

    /// The first day to export.
    pub fn start_day(&self) -> NaiveDate {
        match self.config.start_date {
            Some(s) => s,
            None => days::sub_days(self.last_day(), 29),
        }
    }

    fn check_stream(&self, stream: &StreamId) -> Result<()> {
        if self.info.stream(stream).is_some() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::NotFound, "unknown Mixpanel stream")
                .with_context("stream", stream))
        }
    }

    async fn read_events(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let last = self.last_day();
        let start = self.start_day();
        let pos = match cursor {
            None => DayPosition::Window {
                from: start,
                to: None,
                page: 0,
            },
            Some(t) => EventsCursor::from_token(t)?.0,
        };
        let (from, to, page) = match pos {
            DayPosition::CaughtUp { through } => (
                days::repull_from(
                    through.min(last),
                    self.config.attribution_window_days,
                    start,
                ),
                None,
                0,
            ),
            DayPosition::Window { from, to, page } => (from, to, page),
        };
        if from > last {
            let next = EventsCursor(DayPosition::CaughtUp { through: last }).to_token();
            return Ok(Page::new(Vec::new(), Some(next), false));
        }
        let to = to.unwrap_or_else(|| days::window_end(from, self.config.window_days, last));
        let stream_id = StreamId::from_static(streams::EVENTS);

        let mut live = self.live.lock().await;
        let mut export = match live.take() {
            Some(l) if cursor.is_some_and(|c| c.as_str() == l.token) => l,
            _ => {
                tracing::debug!(%from, %to, page, "opening a Mixpanel export");
                LiveExport {
                    token: String::new(),
                    lines: self.api.export(from, to).await?,
                    seen: HashSet::new(),
                }
            }
        };
        let page_size = self.config.page_size as usize;
        let mut records = Vec::with_capacity(page_size.min(16_384));
        let mut rejects = Vec::new();
        let mut duplicates = 0u64;
        let mut ended = false;
        while records.len() + rejects.len() < page_size {
            let line = match export.lines.next_line().await {
                None => {
                    ended = true;
                    break;
                }
                Some(Err(e)) => {
                    return Err(e
                        .with_context("stream", streams::EVENTS)
                        .with_context("window", format!("{from}..{to}")));
                }
                Some(Ok(line)) => line,
            };
            let bytes = match line {
                ExportLine::TooLong(prefix) => {
                    let e = Error::invalid_response(format!(
                        "exported line longer than max_line_bytes ({}): discarded; its first bytes are kept",
                        self.config.max_line_bytes
                    ));
                    rejects.push(Reject::unparsed(stream_id.clone(), None, prefix, &e));
                    continue;
                }
                ExportLine::Line(b) => trim_line(&b),
            };
            if bytes.is_empty() {
                continue;
            }
            if &bytes[..] == TERMINATED_EARLY {
                return Err(Error::new(
                    ErrorKind::Upstream,
                    "Mixpanel cut the export short (`terminated early`); the window is read again on the next sync",
                )
                .temporary()
                .with_context("connector", NAME)
                .with_context("window", format!("{from}..{to}")));
            }
            match models::event_record(bytes.clone(), &self.time) {
                Ok((record, key)) => {
                    if export.seen.len() >= MAX_DEDUPE_KEYS {
                        export.seen.clear();
                    }
                    if export.seen.insert(key) {
                        records.push(record);
                    } else {
                        duplicates += 1;
                    }
                }
                Err(e) => rejects.push(Reject::unparsed(stream_id.clone(), None, bytes, &e)),
            }
        }
        if duplicates > 0 {
            tracing::debug!(duplicates, "Mixpanel export: duplicate events skipped");
        }
        if ended {
            let (next, more) = if to >= last {
                (DayPosition::CaughtUp { through: to }, false)
            } else {
                (
                    DayPosition::Window {
                        from: days::add_days(to, 1),
                        to: None,
                        page: 0,
                    },
                    true,
                )
            };
            return Ok(
                Page::new(records, Some(EventsCursor(next).to_token()), more).with_rejects(rejects),
            );
        }
        let next = EventsCursor(DayPosition::Window {
            from,
            to: Some(to),
            page: page.saturating_add(1),
        })
        .to_token();
        export.token = next.as_str().to_string();
        *live = Some(export);
        Ok(Page::new(records, Some(next), true).with_rejects(rejects))
    }

    /// One Engage page, restarting the walk once if a stored session is refused (sessions
    /// expire).
    async fn engage_page(
        &self,
        position: Option<&EngagePosition>,
        cohort: Option<&str>,
    ) -> Result<EngageRead> {
        let size = self.config.engage_page_size;
        let body = match self
            .api
            .engage(
                position.map(|p| (p.session_id.as_str(), p.page)),
                cohort,
                size,
            )
            .await
        {
            Err(e) if position.is_some() && e.kind() == ErrorKind::InvalidInput => {
                tracing::info!(error = %e, "Engage session refused; the walk starts again");
                self.api.engage(None, cohort, size).await?
            }
            other => other?,
        };
        let page: EngagePage<'_> = serde_json::from_slice(&body)
            .map_err(|e| Error::from_json(e, "Engage response").permanent())?;
        let asked = u64::from(size);
        let got = page.results.len() as u64;
        apex_connect_core::http::check_page_len(got as usize, size as usize)?;
        let page_size = page
            .page_size
            .0
            .filter(|n| *n > 0)
            .unwrap_or(asked)
            .min(asked.max(1));
        let this_page = page.page.0.unwrap_or(0);
        let bound = page
            .total
            .0
            .map(|t| t.div_ceil(page_size).saturating_add(ENGAGE_SLACK_PAGES));
        let more =
            got > 0 && got >= page_size && bound.is_none_or(|b| this_page.saturating_add(1) < b);
        let next = if more {
            let session_id = page
                .session_id
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    Error::invalid_response("Engage answered a full page without a session_id")
                })?;
            let next_page = u32::try_from(this_page.saturating_add(1))
                .map_err(|_| Error::invalid_response("Engage page number out of range"))?;
            Some(EngagePosition {
                session_id,
                page: next_page,
            })
        } else {
            None
        };
        let items = page
            .results
            .iter()
            .map(|item| {
                let bytes = Bytes::copy_from_slice(item.get().as_bytes());
                (
                    models::profile_id(item.get().as_bytes()),
                    RawJson::from_raw_in(&body, item),
                    bytes,
                )
            })
            .collect();
        Ok(EngageRead { items, next })
    }

    async fn read_profiles(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let c = match cursor {
            Some(t) => ProfilesCursor::from_token(t)?,
            None => ProfilesCursor {
                next: None,
                walks: 0,
            },
        };
        let stream = StreamId::from_static(streams::PROFILES);
        let read = self.engage_page(c.next.as_ref(), None).await?;
        let mut records = Vec::with_capacity(read.items.len());
        let mut rejects = Vec::new();
        for (id, raw, bytes) in read.items {
            match id {
                Ok(id) => records.push(Record::upsert(stream.clone(), id, raw)),
                Err(e) => rejects.push(Reject::unparsed(stream.clone(), None, bytes, &e)),
            }
        }
        let more = read.next.is_some();
        let next = ProfilesCursor {
            walks: if more {
                c.walks
            } else {
                c.walks.saturating_add(1)
            },
            next: read.next,
        };
        Ok(Page::new(records, Some(next.to_token()), more).with_rejects(rejects))
    }

    /// Lists `path` (a JSON array) and returns each item's raw slice.
    async fn list(&self, path: &str) -> Result<(Bytes, Vec<Box<RawValue>>)> {
        let body = self.api.query_get(path, &[]).await?;
        let items: Vec<&RawValue> = serde_json::from_slice(&body)
            .map_err(|e| Error::from_json(e, "Mixpanel list").permanent())?;
        let owned = items.into_iter().map(RawValue::to_owned).collect();
        Ok((body, owned))
    }

    async fn read_list(
        &self,
        stream_name: &'static str,
        path: &str,
        walks: u64,
        id_of: fn(&[u8]) -> Result<String>,
    ) -> Result<(Vec<Record>, Vec<Reject>, u64)> {
        let stream = StreamId::from_static(stream_name);
        let body = self.api.query_get(path, &[]).await?;
        let items: Vec<&RawValue> = serde_json::from_slice(&body)
            .map_err(|e| Error::from_json(e, "Mixpanel list").permanent())?;
        let mut records = Vec::with_capacity(items.len());
        let mut rejects = Vec::new();
        for item in items {
            let raw = RawJson::from_raw_in(&body, item);
            match id_of(item.get().as_bytes()) {
                Ok(id) => records.push(Record::upsert(stream.clone(), id, raw)),
                Err(e) => rejects.push(Reject::unparsed(
                    stream.clone(),
                    None,
                    raw.bytes().clone(),
                    &e,
                )),
            }
        }
        Ok((records, rejects, walks.saturating_add(1)))
    }

    async fn read_cohorts(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let walks = match cursor {
            Some(t) => CohortsCursor::from_token(t)?.0.walks,
            None => 0,
        };
        let (records, rejects, walks) = self
            .read_list(streams::COHORTS, COHORTS_PATH, walks, models::cohort_id)
            .await?;
        let next = CohortsCursor(ListCursor { walks }).to_token();
        Ok(Page::new(records, Some(next), false).with_rejects(rejects))
    }

    async fn read_funnels(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let walks = match cursor {
            Some(t) => FunnelsCursor::from_token(t)?.0.walks,
            None => 0,
        };
        let (records, rejects, walks) = self
            .read_list(
                streams::FUNNELS,
                FUNNELS_LIST_PATH,
                walks,
                models::funnel_id,
            )
            .await?;
        let next = FunnelsCursor(ListCursor { walks }).to_token();
        Ok(Page::new(records, Some(next), false).with_rejects(rejects))
    }

    /// The ids listed at `path` (unreadable items skipped), at most [`MAX_LISTED`].
    async fn list_ids(
        &self,
        path: &str,
        id_of: fn(&[u8]) -> Result<String>,
    ) -> Result<Vec<String>> {
        let (_, items) = self.list(path).await?;
        let mut ids: Vec<String> = items
            .iter()
            .filter_map(|i| id_of(i.get().as_bytes()).ok())
            .collect();
        ids.dedup();
        if ids.len() > MAX_LISTED {
            tracing::warn!(
                listed = ids.len(),
                kept = MAX_LISTED,
                path,
                "Mixpanel list truncated"
            );
            ids.truncate(MAX_LISTED);
        }
        Ok(ids)
    }

    async fn read_members(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let mut c = match cursor {
            Some(t) => CohortMembersCursor::from_token(t)?,
            None => CohortMembersCursor {
                cohorts: Vec::new(),
                index: 0,
                engage: None,
                walks: 0,
            },
        };
        if c.cohorts.is_empty() || c.index >= c.cohorts.len() {
            c.cohorts = self.list_ids(COHORTS_PATH, models::cohort_id).await?;
            c.index = 0;
            c.engage = None;
            if c.cohorts.is_empty() {
                let next = CohortMembersCursor {
                    cohorts: Vec::new(),
                    index: 0,
                    engage: None,
                    walks: c.walks.saturating_add(1),
                };
                return Ok(Page::new(Vec::new(), Some(next.to_token()), false));
            }
        }
        let cohort = c.cohorts[c.index].clone();
        let stream = StreamId::from_static(streams::COHORT_MEMBERS);
        let read = self.engage_page(c.engage.as_ref(), Some(&cohort)).await?;
        let mut records = Vec::with_capacity(read.items.len());
        let mut rejects = Vec::new();
        for (id, raw, bytes) in read.items {
            match id {
                Ok(id) => records.push(
                    Record::upsert(stream.clone(), models::member_id(&cohort, &id), raw)
                        .with_parent(cohort.clone()),
                ),
                Err(e) => rejects.push(
                    Reject::unparsed(stream.clone(), None, bytes, &e)
                        .with_parent(Some(cohort.clone())),
                ),
            }
        }
        let (next, more) = if read.next.is_some() {
            c.engage = read.next;
            (c, true)
        } else if c.index + 1 < c.cohorts.len() {
            c.index += 1;
            c.engage = None;
            (c, true)
        } else {
            (
                CohortMembersCursor {
                    cohorts: Vec::new(),
                    index: 0,
                    engage: None,
                    walks: c.walks.saturating_add(1),
                },
                false,
            )
        };
        Ok(Page::new(records, Some(next.to_token()), more).with_rejects(rejects))
    }

    async fn read_funnel_results(&self, cursor: Option<&CursorToken>) -> Result<Page> {
        let last = self.last_day();
        let start = self.start_day();
        let state = cursor.map(FunnelResultsCursor::from_token).transpose()?;
        let (funnels, index, walk_from, from) = match state {
            Some(FunnelResultsCursor::Walk {
                funnels,
                index,
                walk_from,
                from,
            }) if index < funnels.len() => (funnels, index, walk_from, from),
            other => {
                let walk_from = match other {
                    Some(FunnelResultsCursor::CaughtUp { through }) => days::repull_from(
                        through.min(last),
                        self.config.attribution_window_days,
                        start,
                    ),
                    _ => start,
                };
                let funnels = if self.config.funnel_ids.is_empty() {
                    self.list_ids(FUNNELS_LIST_PATH, models::funnel_id).await?
                } else {
                    self.config.funnel_ids.iter().map(u64::to_string).collect()
                };
                (funnels, 0, walk_from, walk_from)
            }
        };
        let caught_up = |records: Vec<Record>, rejects: Vec<Reject>| {
            let next = FunnelResultsCursor::CaughtUp { through: last }.to_token();
            Ok(Page::new(records, Some(next), false).with_rejects(rejects))
        };
        if funnels.is_empty() || walk_from > last || from > last {
            return caught_up(Vec::new(), Vec::new());
        }
        let funnel = funnels[index].clone();
        let to = days::window_end(from, self.config.window_days, last);
        let body = self
            .api
            .query_get(
                FUNNELS_PATH,
                &[
                    ("funnel_id", funnel.clone()),
                    ("from_date", from.to_string()),
                    ("to_date", to.to_string()),
                    ("unit", "day".to_string()),
                ],
            )
            .await?;
        #[derive(Deserialize)]
        struct Results<'a> {
            #[serde(borrow, default)]
            data: BTreeMap<&'a str, &'a RawValue>,
        }
        let parsed: Results<'_> = serde_json::from_slice(&body)
            .map_err(|e| Error::from_json(e, "funnel results").permanent())?;
        let stream = StreamId::from_static(streams::FUNNEL_RESULTS);
        let mut records = Vec::new();
        let mut rejects = Vec::new();
        for (key, value) in parsed.data {
            if key == "$overall" {
                continue;
            }
            let built = key
                .parse::<NaiveDate>()
                .map_err(|e| {
                    Error::invalid_response("funnel result keyed by something else than a date")
                        .with_context("key", key)
                        .set_source(e)
                })
                .and_then(|date| {
                    let raw = models::funnel_result_raw(&funnel, date, value.get().as_bytes())?;
                    Ok(Record::upsert(
                        stream.clone(),
                        models::funnel_result_id(&funnel, date),
                        raw,
                    ))
                });
            match built {
                Ok(r) => records.push(r),
                Err(e) => rejects.push(Reject::unparsed(
                    stream.clone(),
                    None,
                    Bytes::copy_from_slice(value.get().as_bytes()),
                    &e,
                )),
            }
        }
        let next = if to < last {
            FunnelResultsCursor::Walk {
                funnels,
                index,
                walk_from,
                from: days::add_days(to, 1),
            }
        } else if index + 1 < funnels.len() {
            FunnelResultsCursor::Walk {
                funnels,
                index: index + 1,
                walk_from,
                from: walk_from,
            }
        } else {
            return caught_up(records, rejects);
        };
        Ok(Page::new(records, Some(next.to_token()), true).with_rejects(rejects))
    }
}

#[async_trait]
impl Connector for MixpanelConnector {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    /// Lists cohorts (one Query API call, counted against the hourly limit).
    async fn check(&self) -> Result<()> {
        self.api.query_get(COHORTS_PATH, &[]).await.map(|_| ())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        self.check_stream(stream)?;
        match stream.as_str() {
            streams::EVENTS => self.read_events(cursor).await,
            streams::PROFILES => self.read_profiles(cursor).await,
            streams::COHORTS => self.read_cohorts(cursor).await,
            streams::COHORT_MEMBERS => self.read_members(cursor).await,
            streams::FUNNELS => self.read_funnels(cursor).await,
            streams::FUNNEL_RESULTS => self.read_funnel_results(cursor).await,
            _ => Err(Error::new(ErrorKind::NotFound, "unknown Mixpanel stream")
                .with_context("stream", stream)),
        }
    }

    fn map_entity(&self, record: &Record) -> Result<Option<Entity>> {
        let e = match record.stream.as_str() {
            streams::EVENTS => models::event_entity(record)?,
            streams::PROFILES => models::person_entity(record, &record.id)?,
            streams::COHORT_MEMBERS => {
                let cohort = record.parent.clone().unwrap_or_default();
                let distinct = record
                    .id
                    .strip_prefix(&format!("{cohort}:"))
                    .unwrap_or(&record.id)
                    .to_string();
                models::person_entity(record, &distinct)?.with_relation(
                    "member_of",
                    apex_connect_core::SourceRef::new(NAME, "cohort", cohort),
                )
            }
            streams::COHORTS => models::cohort_entity(record)?,
            streams::FUNNELS => models::funnel_entity(record)?,
            streams::FUNNEL_RESULTS => models::funnel_result_entity(record)?,
            _ => return Ok(None),
        };
        Ok(Some(e))
    }

    fn parse_record(
        &self,
        stream: &StreamId,
        raw: &RawJson,
        parent: Option<&str>,
    ) -> Result<Record> {
        self.check_stream(stream)?;
        let bytes = raw.as_bytes();
        let record = match stream.as_str() {
            streams::EVENTS => {
                return models::event_record(raw.bytes().clone(), &self.time).map(|(r, _)| r);
            }
            streams::PROFILES => {
                Record::upsert(stream.clone(), models::profile_id(bytes)?, raw.clone())
            }
            streams::COHORT_MEMBERS => {
                let cohort = parent.ok_or_else(|| {
                    Error::invalid_input("a cohort member is read under its cohort (parent)")
                })?;
                Record::upsert(
                    stream.clone(),
                    models::member_id(cohort, &models::profile_id(bytes)?),
                    raw.clone(),
                )
                .with_parent(cohort)
            }
            streams::COHORTS => {
                Record::upsert(stream.clone(), models::cohort_id(bytes)?, raw.clone())
            }
            streams::FUNNELS => {
                Record::upsert(stream.clone(), models::funnel_id(bytes)?, raw.clone())
            }
            streams::FUNNEL_RESULTS => Record::upsert(
                stream.clone(),
                models::funnel_result_record_id(bytes)?,
                raw.clone(),
            ),
            _ => {
                return Err(Error::new(ErrorKind::NotFound, "unknown Mixpanel stream")
                    .with_context("stream", stream));
            }
        };
        Ok(record)
    }

    async fn discover(&self, stream: &StreamId) -> Result<StreamSchema> {
        let info = self.info.stream(stream).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, "unknown Mixpanel stream")
                .with_context("stream", stream)
        })?;
        let mut schema = StreamSchema::new(info, models::schema_properties(stream.as_str()));
        if let Some(obj) = schema.schema.as_object_mut() {
            obj.insert(
                "required".into(),
                serde_json::json!(models::schema_required(stream.as_str())),
            );
        }
        Ok(schema)
    }
}
