//! GA4 Data API shapes: report definitions and requests, the strict row envelope, the records
//! built from rows, quotas, metadata, entities and JSON Schemas.
//!
//! The Data API answers rows as positional values (`dimensionValues[i]` belongs to
//! `dimensionHeaders[i]`), so a row alone means nothing. Each record's raw JSON is therefore
//! a named object built from one row, every value kept verbatim (GA4 sends all values as
//! strings):
//!
//! ```json
//! {"property_id":"123","report":"pages","date":"2024-01-02",
//!  "dimensions":{"hostName":"example.com","pagePath":"/pricing","pageTitle":"Pricing"},
//!  "metrics":{"screenPageViews":"41","activeUsers":"17","userEngagementDuration":"512"}}
//! ```
//!
//! The envelope is strict where the record id comes from: the `dimensionValues` (one string
//! per header) and, for dated reports, a `date` of `YYYYMMDD`. Metric values are read
//! leniently (a missing or odd value is `null`).

use std::borrow::Cow;

use apex_connect_core::lenient::{Lenient, LenientI64, LenientStr, LenientVec};
use apex_connect_core::{Entity, EntityKind, Error, RawJson, Record, Result, SourceRef, StreamId};
use bytes::Bytes;
use chrono::NaiveDate;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::NAME;
use super::config::{Ga4Config, ReportSpec};

/// The stream names.
pub mod streams {
    /// Daily traffic by session source and medium.
    pub const TRAFFIC_SOURCES: &str = "traffic_sources";
    /// Daily page views by host, path and title.
    pub const PAGES: &str = "pages";
    /// Daily event counts by event name.
    pub const EVENTS: &str = "events";
    /// Daily sessions, engaged sessions and average session duration by one dimension.
    pub const SESSIONS: &str = "sessions";
    /// Daily key events (conversions) by event name.
    pub const CONVERSIONS: &str = "conversions";
    /// Weekly acquisition cohorts (`cohortSpec`).
    pub const COHORTS: &str = "cohorts";
    /// Funnels defined in the settings (`runFunnelReport`).
    pub const FUNNELS: &str = "funnels";
    /// The streams every connection has.
    pub const BUILT_IN: &[&str] = &[
        TRAFFIC_SOURCES,
        PAGES,
        EVENTS,
        SESSIONS,
        CONVERSIONS,
        COHORTS,
    ];
}

/// A report read day window by day window: its dimensions (`date` first), metrics and filters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReportDef {
    /// The stream.
    pub name: String,
    /// Dimension API names, `date` first.
    pub dimensions: Vec<String>,
    /// Metric API names.
    pub metrics: Vec<String>,
    /// A `FilterExpression` on dimensions.
    pub dimension_filter: Option<Value>,
    /// A `FilterExpression` on metrics.
    pub metric_filter: Option<Value>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl ReportDef {
    /// A dated report: `date` is put first (and not repeated).
    pub fn new(name: &str, dimensions: &[String], metrics: &[String]) -> Self {
        let mut dims = vec!["date".to_string()];
        dims.extend(dimensions.iter().filter(|d| d.as_str() != "date").cloned());
        ReportDef {
            name: name.to_string(),
            dimensions: dims,
            metrics: metrics.to_vec(),
            dimension_filter: None,
            metric_filter: None,
        }
    }

    /// A report defined in the settings.
    pub fn from_spec(spec: &ReportSpec) -> Self {
        let mut d = ReportDef::new(&spec.name, &spec.dimensions, &spec.metrics);
        d.dimension_filter = spec.dimension_filter.clone();
        d.metric_filter = spec.metric_filter.clone();
        d
    }

    /// The built-in report `name`, as `config` tunes it (`None` for `cohorts`, `funnels` and
    /// unknown names).
    pub fn built_in(name: &str, config: &Ga4Config) -> Option<Self> {
        Some(match name {
            streams::TRAFFIC_SOURCES => ReportDef::new(
                name,
                &names(&["sessionSource", "sessionMedium"]),
                &names(&[
                    "sessions",
                    "totalUsers",
                    "newUsers",
                    "engagedSessions",
                    "screenPageViews",
                ]),
            ),
            streams::PAGES => ReportDef::new(
                name,
                &names(&["hostName", "pagePath", "pageTitle"]),
                &names(&["screenPageViews", "activeUsers", "userEngagementDuration"]),
            ),
            streams::EVENTS => ReportDef::new(
                name,
                &names(&["eventName"]),
                &names(&["eventCount", "totalUsers", "eventValue"]),
            ),
            streams::SESSIONS => ReportDef::new(
                name,
                std::slice::from_ref(&config.sessions_dimension),
                &names(&[
                    "sessions",
                    "engagedSessions",
                    "averageSessionDuration",
                    "bounceRate",
                ]),
            ),
            streams::CONVERSIONS => {
                let mut d = ReportDef::new(
                    name,
                    &names(&["eventName"]),
                    &[
                        config.conversions_metric.clone(),
                        "totalRevenue".to_string(),
                    ],
                );
                d.metric_filter = Some(json!({"filter": {
                    "fieldName": config.conversions_metric,
                    "numericFilter": {"operation": "GREATER_THAN", "value": {"int64Value": "0"}},
                }}));
                d
            }
            _ => return None,
        })
    }

    /// The `runReport` request for `from..=to`, rows `offset..offset + limit`, ordered by the
    /// dimensions (so offset paging is stable while the numbers of recent days change).
    pub fn request(&self, from: NaiveDate, to: NaiveDate, offset: u64, limit: u32) -> Value {
        let mut body = json!({
            "dateRanges": [{"startDate": from.to_string(), "endDate": to.to_string()}],
            "dimensions": self.dimensions.iter().map(|d| json!({"name": d})).collect::<Vec<_>>(),
            "metrics": self.metrics.iter().map(|m| json!({"name": m})).collect::<Vec<_>>(),
            "orderBys": self.dimensions.iter().map(|d| json!({"dimension": {"dimensionName": d}})).collect::<Vec<_>>(),
            // int64 fields are strings in JSON.
            "offset": offset.to_string(),
            "limit": limit.to_string(),
            "keepEmptyRows": false,
            "returnPropertyQuota": true,
        });
        if let Some(f) = &self.dimension_filter {
            body["dimensionFilter"] = f.clone();
        }
        if let Some(f) = &self.metric_filter {
            body["metricFilter"] = f.clone();
        }
        body
    }
}

/// One quota's state in a `propertyQuota` answer.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[non_exhaustive]
pub struct QuotaStatus {
    /// Consumed by this request.
    #[serde(default)]
    pub consumed: LenientI64,
    /// Left in the quota's window.
    #[serde(default)]
    pub remaining: LenientI64,
}

/// `propertyQuota` of an answer (requested with `returnPropertyQuota`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct PropertyQuota {
    /// Tokens per day.
    pub tokens_per_day: Lenient<QuotaStatus>,
    /// Tokens per hour.
    pub tokens_per_hour: Lenient<QuotaStatus>,
    /// Tokens per project per hour.
    pub tokens_per_project_per_hour: Lenient<QuotaStatus>,
    /// Concurrent requests.
    pub concurrent_requests: Lenient<QuotaStatus>,
    /// Server errors per project per hour.
    pub server_errors_per_project_per_hour: Lenient<QuotaStatus>,
    /// Potentially thresholded requests per hour.
    pub potentially_thresholded_requests_per_hour: Lenient<QuotaStatus>,
}

#[derive(Debug, Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// A `runReport` answer (or a funnel report's `funnelTable`): headers, row slices, quotas.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportPage<'a> {
    #[serde(borrow, default)]
    dimension_headers: Vec<Header<'a>>,
    #[serde(borrow, default)]
    metric_headers: Vec<Header<'a>>,
    /// The rows, as slices of the body.
    #[serde(borrow, default)]
    pub rows: Vec<&'a RawValue>,
    /// Rows in the whole result, whatever `limit` and `offset`.
    #[serde(default)]
    pub row_count: apex_connect_core::lenient::LenientU64,
    /// The quotas, when asked for.
    #[serde(default)]
    pub property_quota: Lenient<PropertyQuota>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

impl<'a> ReportPage<'a> {
    /// Reads an answer.
    ///
    /// # Errors
    /// `InvalidResponse` when it is not a report answer.
    pub fn parse(body: &'a [u8]) -> Result<Self> {
        serde_json::from_slice(body).map_err(|e| Error::from_json(e, "GA4 report").permanent())
    }

    /// The dimension header names.
    pub fn dimensions(&self) -> Vec<&str> {
        self.dimension_headers
            .iter()
            .map(|h| h.name.as_ref())
            .collect()
    }

    /// The metric header names.
    pub fn metrics(&self) -> Vec<&str> {
        self.metric_headers
            .iter()
            .map(|h| h.name.as_ref())
            .collect()
    }

    /// The answer's data-quality flags (`dataLossFromOtherRow`, `subjectToThresholding`,
    /// sampling), to attach to each record; `None` when none is set.
    pub fn quality(&self) -> Option<Value> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            #[serde(default)]
            data_loss_from_other_row: apex_connect_core::lenient::LenientBool,
            #[serde(default)]
            subject_to_thresholding: apex_connect_core::lenient::LenientBool,
            #[serde(default)]
            sampling_metadatas: Lenient<Value>,
        }
        let m: Meta = serde_json::from_str(self.metadata?.get()).ok()?;
        let mut q = Map::new();
        if m.data_loss_from_other_row.0 == Some(true) {
            q.insert("data_loss_from_other_row".into(), Value::Bool(true));
        }
        if m.subject_to_thresholding.0 == Some(true) {
            q.insert("subject_to_thresholding".into(), Value::Bool(true));
        }
        if let Some(s) = m
            .sampling_metadatas
            .0
            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        {
            q.insert("sampling".into(), s);
        }
        (!q.is_empty()).then_some(Value::Object(q))
    }
}

/// A `runFunnelReport` answer: its funnel table and the quotas.
#[derive(Debug, Deserialize)]
pub struct FunnelAnswer<'a> {
    /// The funnel table (one row per step).
    #[serde(borrow, rename = "funnelTable", default)]
    pub table: Option<ReportPage<'a>>,
    /// The quotas, when asked for.
    #[serde(rename = "propertyQuota", default)]
    pub property_quota: Lenient<PropertyQuota>,
}

impl<'a> FunnelAnswer<'a> {
    /// Reads an answer.
    ///
    /// # Errors
    /// `InvalidResponse` when it is not a funnel report answer.
    pub fn parse(body: &'a [u8]) -> Result<Self> {
        serde_json::from_slice(body)
            .map_err(|e| Error::from_json(e, "GA4 funnel report").permanent())
    }
}

#[derive(Deserialize)]
struct DimValue<'a> {
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MetricValue<'a> {
    #[serde(borrow, default)]
    value: LenientStr<'a>,
}

#[derive(Deserialize)]
struct RowEnvelope<'a> {
    #[serde(borrow, rename = "dimensionValues", default)]
    dimensions: Vec<DimValue<'a>>,
    #[serde(borrow, rename = "metricValues", default)]
    metrics: LenientVec<Lenient<MetricValue<'a>>>,
}

/// A row read: dimension values (strict) and metric values (lenient).
#[derive(Debug)]
pub struct Row<'a> {
    /// One value per dimension header.
    pub dimensions: Vec<Cow<'a, str>>,
    /// One value per metric header (`None`: missing or unreadable).
    pub metrics: Vec<Option<Cow<'a, str>>>,
}

impl<'a> Row<'a> {
    /// Reads a row of an answer with `dims` dimensions and `metrics` metrics.
    ///
    /// # Errors
    /// `InvalidResponse` when `dimensionValues` is not one string value per header.
    pub fn parse(raw: &'a RawValue, dims: usize, metrics: usize) -> Result<Self> {
        let env: RowEnvelope<'a> = serde_json::from_str(raw.get()).map_err(|e| {
            Error::invalid_response("GA4 row without readable dimensionValues").set_source(e)
        })?;
        if env.dimensions.len() != dims {
            return Err(Error::invalid_response(
                "GA4 row has another number of dimension values than headers",
            )
            .with_context("values", env.dimensions.len())
            .with_context("headers", dims));
        }
        let mut m: Vec<Option<Cow<'a, str>>> = env
            .metrics
            .0
            .into_iter()
            .map(|v| v.0.and_then(|v| v.value.0))
            .collect();
        m.resize(metrics, None);
        Ok(Row {
            dimensions: env
                .dimensions
                .into_iter()
                .map(|d| d.value.unwrap_or(Cow::Borrowed("")))
                .collect(),
            metrics: m,
        })
    }
}

/// `YYYYMMDD` (GA4's `date` dimension) as a date.
///
/// # Errors
/// `InvalidResponse` for anything else.
pub fn parse_ga_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y%m%d").map_err(|e| {
        Error::invalid_response("GA4 date is not YYYYMMDD")
            .with_context("value", s)
            .set_source(e)
    })
}

/// Characters escaped in id parts: `/` separates parts; `%` escapes.
const ID_PART: &AsciiSet = &CONTROLS.add(b'/').add(b'%');

/// A record id from its parts: each percent-escaped, joined by `/`.
pub fn id_from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.extend(utf8_percent_encode(p, ID_PART));
    }
    out
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_map<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a str, Option<&'a str>)>) {
    out.push(b'{');
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, k);
        out.push(b':');
        match v {
            Some(v) => push_str(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

/// What a record built from a row says besides its dimensions and metrics.
#[derive(Debug, Clone, Copy)]
pub struct RowContext<'a> {
    /// The property.
    pub property_id: &'a str,
    /// The stream.
    pub report: &'a str,
    /// Extra top-level string fields (`funnel`, `date`, `step`, `cohort`, ...), in order.
    pub fields: &'a [(&'a str, &'a str)],
    /// Data-quality flags of the answer.
    pub quality: Option<&'a Value>,
}

/// The raw JSON of a record built from a row (see the module documentation).
pub fn row_raw<'a>(
    ctx: &RowContext<'_>,
    dimensions: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    metrics: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> RawJson {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"property_id\":");
    push_str(&mut out, ctx.property_id);
    out.extend_from_slice(b",\"report\":");
    push_str(&mut out, ctx.report);
    for (k, v) in ctx.fields {
        out.push(b',');
        push_str(&mut out, k);
        out.push(b':');
        push_str(&mut out, v);
    }
    out.extend_from_slice(b",\"dimensions\":");
    push_map(&mut out, dimensions);
    out.extend_from_slice(b",\"metrics\":");
    push_map(&mut out, metrics);
    if let Some(q) = ctx.quality {
        out.extend_from_slice(b",\"quality\":");
        let _ = serde_json::to_writer(&mut out, q);
    }
    out.push(b'}');
    RawJson::parse(Bytes::from(out)).unwrap_or_default()
}

/// A record of a dated report from one row (`dims` are the answer's dimension headers, `date`
/// first; `metric_names` its metric headers).
///
/// # Errors
/// `InvalidResponse` when the row's envelope cannot be read.
pub fn report_record(
    stream: &StreamId,
    property_id: &str,
    dims: &[&str],
    metric_names: &[&str],
    raw: &RawValue,
    quality: Option<&Value>,
) -> Result<Record> {
    let row = Row::parse(raw, dims.len(), metric_names.len())?;
    let date_idx = dims
        .iter()
        .position(|d| *d == "date")
        .ok_or_else(|| Error::invalid_response("GA4 report answer without the date dimension"))?;
    let date = parse_ga_date(&row.dimensions[date_idx])?.to_string();
    let others = || {
        dims.iter()
            .zip(row.dimensions.iter())
            .enumerate()
            .filter(move |(i, _)| *i != date_idx)
            .map(|(_, (k, v))| (*k, v.as_ref()))
    };
    let id = id_from_parts(std::iter::once(date.as_str()).chain(others().map(|(_, v)| v)));
    let ctx = RowContext {
        property_id,
        report: stream.as_str(),
        fields: &[("date", date.as_str())],
        quality,
    };
    let raw = row_raw(
        &ctx,
        others().map(|(k, v)| (k, Some(v))),
        metric_names
            .iter()
            .zip(row.metrics.iter())
            .map(|(k, v)| (*k, v.as_deref())),
    );
    Ok(Record::upsert(stream.clone(), id, raw))
}

#[derive(Deserialize)]
struct BuiltEnvelope<'a> {
    #[serde(borrow, default)]
    date: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    funnel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    step: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cohort: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    cohort_nth_week: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dimensions: std::collections::BTreeMap<Cow<'a, str>, Option<Cow<'a, str>>>,
}

/// The id of a record built by this module, read back from its raw JSON: reports by `date` and
/// the values of `dims` (the report's dimensions but `date`, in order); funnels by
/// `funnel/date/step`; cohorts by `cohort/cohort_nth_week`.
///
/// # Errors
/// `InvalidResponse` when a part of the id is missing.
pub fn built_record_id(stream: &str, raw: &[u8], dims: &[String]) -> Result<String> {
    let env: BuiltEnvelope<'_> = serde_json::from_slice(raw)
        .map_err(|e| Error::invalid_response("not a GA4 record of this connector").set_source(e))?;
    let missing = |what: &'static str| {
        Error::invalid_response("GA4 record without a part of its id").with_context("field", what)
    };
    match stream {
        streams::FUNNELS => Ok(id_from_parts([
            env.funnel.as_deref().ok_or_else(|| missing("funnel"))?,
            env.date.as_deref().ok_or_else(|| missing("date"))?,
            env.step.as_deref().ok_or_else(|| missing("step"))?,
        ])),
        streams::COHORTS => Ok(id_from_parts([
            env.cohort.as_deref().ok_or_else(|| missing("cohort"))?,
            env.cohort_nth_week
                .as_deref()
                .ok_or_else(|| missing("cohort_nth_week"))?,
        ])),
        _ => {
            let date = env.date.as_deref().ok_or_else(|| missing("date"))?;
            let mut parts = vec![date];
            for d in dims.iter().filter(|d| d.as_str() != "date") {
                let v = env
                    .dimensions
                    .get(d.as_str())
                    .and_then(|v| v.as_deref())
                    .ok_or_else(|| missing("dimensions"))?;
                parts.push(v);
            }
            Ok(id_from_parts(parts))
        }
    }
}

#[derive(Deserialize)]
struct EntityView<'a> {
    #[serde(borrow, default)]
    report: LenientStr<'a>,
    #[serde(borrow, default)]
    date: LenientStr<'a>,
    #[serde(default)]
    dimensions: Lenient<Map<String, Value>>,
    #[serde(default)]
    metrics: Lenient<Map<String, Value>>,
    #[serde(default)]
    quality: Lenient<Value>,
    #[serde(borrow, default)]
    funnel: LenientStr<'a>,
    #[serde(borrow, default)]
    step: LenientStr<'a>,
    #[serde(borrow, default)]
    cohort: LenientStr<'a>,
    #[serde(borrow, default)]
    cohort_nth_week: LenientStr<'a>,
}

/// A metric value as a number: integers stay integers; `None` when it is not a number.
pub fn metric_number(v: &Value) -> Value {
    let s = match v {
        Value::String(s) => s.trim(),
        Value::Number(_) => return v.clone(),
        _ => return Value::Null,
    };
    if let Ok(i) = s.parse::<i64>() {
        return json!(i);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() => json!(f),
        _ => Value::Null,
    }
}

/// The entity of a GA4 record: `Other("ga4_report_row")` (reports), `Other("funnel_step_metrics")`
/// (funnels) or `Other("cohort_metrics")` (cohorts), with the dimensions and the metrics as
/// numbers.
///
/// # Errors
/// `InvalidResponse` when the record's JSON is not an object.
pub fn entity(record: &Record) -> Result<Entity> {
    let v: EntityView<'_> = record.raw.deserialize()?;
    let kind = match record.stream.as_str() {
        streams::FUNNELS => "funnel_step_metrics",
        streams::COHORTS => "cohort_metrics",
        _ => "ga4_report_row",
    };
    let mut e = Entity::new(
        EntityKind::Other(kind.into()),
        SourceRef::new(NAME, record.stream.to_string(), record.id.clone()),
    )
    .with_attr("report", json!(v.report.non_empty()))
    .with_attr("date", json!(v.date.non_empty()))
    .with_attr("funnel", json!(v.funnel.non_empty()))
    .with_attr("step", json!(v.step.non_empty()))
    .with_attr("cohort", json!(v.cohort.non_empty()))
    .with_attr("cohort_nth_week", json!(v.cohort_nth_week.non_empty()));
    if let Some(d) = v.dimensions.0 {
        e = e.with_attr("dimensions", Value::Object(d));
    }
    if let Some(m) = v.metrics.0 {
        let typed: Map<String, Value> = m
            .iter()
            .map(|(k, v)| (k.clone(), metric_number(v)))
            .collect();
        e = e.with_attr("metrics", Value::Object(typed));
    }
    if let Some(q) = v.quality.0 {
        e = e.with_attr("quality", q);
    }
    let name = [
        v.report.non_empty(),
        v.funnel.non_empty(),
        v.date.non_empty(),
        v.step.non_empty(),
        v.cohort.non_empty(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    if !name.is_empty() {
        e = e.with_name(name);
    }
    Ok(e)
}

/// A dimension or metric the property describes (`getMetadata`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct FieldMeta {
    /// The API name (`country`, `customEvent:plan`).
    pub api_name: String,
    /// The name in the GA4 interface.
    pub ui_name: Option<String>,
    /// Its description.
    pub description: Option<String>,
    /// A metric's type (`TYPE_INTEGER`, `TYPE_FLOAT`, `TYPE_SECONDS`, `TYPE_CURRENCY`, ...).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Whether the property defines it (custom dimension or metric).
    pub custom_definition: bool,
    /// Its category.
    pub category: Option<String>,
}

/// A property's metadata: every dimension and metric it can report, custom ones included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// Dimensions.
    pub dimensions: Vec<FieldMeta>,
    /// Metrics.
    pub metrics: Vec<FieldMeta>,
}

impl Metadata {
    /// Reads a `getMetadata` answer (entries that do not read are skipped).
    ///
    /// # Errors
    /// `InvalidResponse` when it is not an object.
    pub fn parse(body: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            dimensions: LenientVec<Lenient<FieldMeta>>,
            #[serde(default)]
            metrics: LenientVec<Lenient<FieldMeta>>,
        }
        let raw: Raw = serde_json::from_slice(body)
            .map_err(|e| Error::from_json(e, "GA4 metadata").permanent())?;
        let keep = |v: LenientVec<Lenient<FieldMeta>>| -> Vec<FieldMeta> {
            v.0.into_iter()
                .filter_map(|f| f.0)
                .filter(|f| !f.api_name.is_empty())
                .collect()
        };
        Ok(Metadata {
            dimensions: keep(raw.dimensions),
            metrics: keep(raw.metrics),
        })
    }

    /// The custom dimensions and metrics, by API name.
    pub fn custom(&self) -> Vec<String> {
        self.dimensions
            .iter()
            .chain(&self.metrics)
            .filter(|f| f.custom_definition)
            .map(|f| f.api_name.clone())
            .collect()
    }

    fn describe(&self, name: &str, metric: bool) -> Option<&FieldMeta> {
        let list = if metric {
            &self.metrics
        } else {
            &self.dimensions
        };
        list.iter().find(|f| f.api_name == name)
    }
}

fn field_schema(meta: Option<&FieldMeta>, nullable: bool) -> Value {
    let mut s = if nullable {
        json!({"type": ["string", "null"]})
    } else {
        json!({"type": "string"})
    };
    if let Some(m) = meta {
        let mut desc = m.ui_name.clone().unwrap_or_default();
        if let Some(k) = &m.kind {
            desc = format!("{desc} ({k})");
        }
        if let Some(d) = &m.description {
            desc = format!("{desc}: {d}");
        }
        s["description"] = json!(desc.trim());
    }
    s
}

/// The JSON Schema `properties` of records of a report with `dimensions` and `metrics`,
/// described from the property's metadata when given.
pub fn report_schema(
    dimensions: &[String],
    metrics: &[String],
    extra: &[&str],
    meta: Option<&Metadata>,
) -> Map<String, Value> {
    let dims: Map<String, Value> = dimensions
        .iter()
        .filter(|d| d.as_str() != "date")
        .map(|d| {
            (
                d.clone(),
                field_schema(meta.and_then(|m| m.describe(d, false)), false),
            )
        })
        .collect();
    let mets: Map<String, Value> = metrics
        .iter()
        .map(|m| {
            (
                m.clone(),
                field_schema(meta.and_then(|x| x.describe(m, true)), true),
            )
        })
        .collect();
    let mut props = Map::new();
    props.insert("property_id".into(), json!({"type": "string"}));
    props.insert("report".into(), json!({"type": "string"}));
    for f in extra {
        let s = if *f == "date" {
            json!({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"})
        } else {
            json!({"type": "string"})
        };
        props.insert((*f).to_string(), s);
    }
    props.insert(
        "dimensions".into(),
        json!({"type": "object", "properties": dims, "additionalProperties": {"type": ["string", "null"]}}),
    );
    props.insert(
        "metrics".into(),
        json!({"type": "object", "properties": mets, "additionalProperties": true}),
    );
    props.insert("quality".into(), json!({"type": ["object", "null"]}));
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_named_records_with_stable_ids() {
        let body = br#"{"dimensionHeaders":[{"name":"date"},{"name":"pagePath"}],
            "metricHeaders":[{"name":"screenPageViews","type":"TYPE_INTEGER"},{"name":"activeUsers","type":"TYPE_INTEGER"}],
            "rows":[{"dimensionValues":[{"value":"20240102"},{"value":"/a/b%c"}],"metricValues":[{"value":"41"},{"value":"17"}]},
                    {"dimensionValues":[{"value":"20240102"}],"metricValues":[]},
                    {"dimensionValues":[{"value":"2024-01-02"},{"value":"/"}],"metricValues":[{"value":"1"}]}],
            "rowCount":3,"propertyQuota":{"tokensPerHour":{"consumed":3,"remaining":39997}},
            "metadata":{"subjectToThresholding":true},"kind":"analyticsData#runReport"}"#;
        let page = ReportPage::parse(body).unwrap();
        assert_eq!(page.dimensions(), vec!["date", "pagePath"]);
        assert_eq!(page.row_count.0, Some(3));
        assert_eq!(
            page.property_quota
                .0
                .as_ref()
                .unwrap()
                .tokens_per_hour
                .0
                .unwrap()
                .remaining
                .0,
            Some(39_997)
        );
        let q = page.quality();
        let s = StreamId::from_static(streams::PAGES);
        let r = report_record(
            &s,
            "123",
            &page.dimensions(),
            &page.metrics(),
            page.rows[0],
            q.as_ref(),
        )
        .unwrap();
        assert_eq!(r.id, "2024-01-02/%2Fa%2Fb%25c");
        let v = r.raw.to_value().unwrap();
        assert_eq!(v["dimensions"]["pagePath"], json!("/a/b%c"));
        assert_eq!(v["metrics"]["screenPageViews"], json!("41"));
        assert_eq!(v["quality"]["subject_to_thresholding"], json!(true));
        assert_eq!(
            built_record_id(
                streams::PAGES,
                r.raw.as_bytes(),
                &["date".into(), "pagePath".into()]
            )
            .unwrap(),
            r.id
        );
        // Missing dimension values, or a date that is not YYYYMMDD: envelope errors.
        assert!(
            report_record(
                &s,
                "123",
                &page.dimensions(),
                &page.metrics(),
                page.rows[1],
                None
            )
            .is_err()
        );
        assert!(
            report_record(
                &s,
                "123",
                &page.dimensions(),
                &page.metrics(),
                page.rows[2],
                None
            )
            .is_err()
        );
        let e = entity(&r).unwrap();
        assert_eq!(e.attributes["metrics"]["screenPageViews"], json!(41));
        assert_eq!(e.attributes["date"], json!("2024-01-02"));
    }

    #[test]
    fn metadata_and_schema() {
        let m = Metadata::parse(br#"{"dimensions":[{"apiName":"country","uiName":"Country"},{"apiName":"customEvent:plan","customDefinition":true},7],
            "metrics":[{"apiName":"activeUsers","type":"TYPE_INTEGER"},{"apiName":"customEvent:order_value","type":"TYPE_CURRENCY","customDefinition":true}]}"#).unwrap();
        assert_eq!(
            m.custom(),
            vec!["customEvent:plan", "customEvent:order_value"]
        );
        let props = report_schema(
            &["date".into(), "country".into()],
            &["activeUsers".into()],
            &["date"],
            Some(&m),
        );
        assert!(
            props["dimensions"]["properties"]["country"]["description"]
                .as_str()
                .unwrap()
                .contains("Country")
        );
        assert!(
            props["metrics"]["properties"]["activeUsers"]["description"]
                .as_str()
                .unwrap()
                .contains("TYPE_INTEGER")
        );
        assert_eq!(metric_number(&json!("12.5")), json!(12.5));
        assert_eq!(metric_number(&json!("x")), Value::Null);
    }
}
