//! Bulk API 2.0 query jobs: create, poll with backoff, and read results page by page
//! (`Sforce-Locator`), parsing the CSV as it streams in (gzip accepted) with the `csv` crate.

use std::io::Read;
use std::time::Duration;

use apex_connect_core::http::{Idempotent, path_segment};
use apex_connect_core::lenient::LenientStr;
use apex_connect_core::{Error, ErrorKind, RawJson, Reject, Result, StreamId};
use bytes::Bytes;
use futures::TryStreamExt;
use http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::SalesforceApi;
use crate::cursor::Mark;
use crate::models::{FieldKind, ObjectPlan, parse_datetime};

/// The most decompressed bytes one results page may hold (a hostile server cannot make a
/// page grow without bound).
pub const MAX_BULK_PAGE_BYTES: u64 = 1024 * 1024 * 1024;
/// The longest CSV row kept (bytes); longer rows are quarantined.
pub const MAX_BULK_ROW_BYTES: usize = 4 * 1024 * 1024;

/// A job's state, as `GET /jobs/query/{id}` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobStatus {
    /// `UploadComplete`, `InProgress`, `JobComplete`, `Failed`, `Aborted`.
    pub state: String,
    /// The error message of a failed job.
    pub error: Option<String>,
    /// Records processed so far.
    pub records: Option<u64>,
}

/// One page of results, parsed.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResultsPage {
    /// The records (JSON objects shaped like REST query records), with their marks.
    pub records: Vec<(RawJson, Mark)>,
    /// Rows that could not be read (no `Id`, no stamp, too long).
    pub rejects: Vec<Reject>,
    /// The locator of the next page, `None` after the last.
    pub next_locator: Option<String>,
}

#[derive(Deserialize)]
struct JobView<'a> {
    #[serde(borrow, default)]
    id: LenientStr<'a>,
    #[serde(borrow, default)]
    state: LenientStr<'a>,
    #[serde(rename = "errorMessage", borrow, default)]
    error: LenientStr<'a>,
    #[serde(rename = "numberRecordsProcessed", default)]
    records: apex_connect_core::lenient::LenientU64,
}

impl SalesforceApi {
    /// Creates a query job for `soql` (`operation: query`, CSV, comma, LF); returns its id.
    ///
    /// # Errors
    /// The policy's; `InvalidResponse` for an answer without an id.
    pub async fn bulk_create(&self, soql: &str) -> Result<String> {
        let url = self.data_url("/jobs/query").await?;
        let body = serde_json::json!({
            "operation": "query",
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        });
        let (_, body) = self
            .send_bytes(self.request(Method::POST, &url)?.json(&body))
            .await?;
        let v: JobView<'_> =
            serde_json::from_slice(&body).map_err(|e| Error::from_json(e, "bulk job"))?;
        let id =
            v.id.non_empty()
                .filter(|id| {
                    crate::config::is_api_name(id) || id.bytes().all(|b| b.is_ascii_alphanumeric())
                })
                .ok_or_else(|| Error::invalid_response("the bulk job answer has no usable id"))?;
        Ok(id.to_string())
    }

    /// The state of job `id`.
    ///
    /// # Errors
    /// The policy's (`NotFound` for a job deleted meanwhile).
    pub async fn bulk_status(&self, id: &str) -> Result<JobStatus> {
        let url = self
            .data_url(&format!("/jobs/query/{}", path_segment(id)?))
            .await?;
        let (_, body) = self.send_bytes(self.request(Method::GET, &url)?).await?;
        let v: JobView<'_> =
            serde_json::from_slice(&body).map_err(|e| Error::from_json(e, "bulk job"))?;
        Ok(JobStatus {
            state: v.state.to_owned_string().unwrap_or_default(),
            error: v.error.to_owned_string(),
            records: v.records.0,
        })
    }

    /// Polls job `id` until it completes, waiting 0.5 s, then 1.5 times longer each time (at
    /// most 10 s), for at most `timeout`.
    ///
    /// # Errors
    /// `Upstream` (permanent) for a `Failed` or `Aborted` job; `Upstream` (temporary) when it
    /// is still running after `timeout` (the cursor keeps the job: the next read polls again).
    pub async fn bulk_wait(&self, id: &str, timeout: Duration) -> Result<JobStatus> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(500);
        loop {
            let s = self.bulk_status(id).await?;
            match s.state.as_str() {
                "JobComplete" => return Ok(s),
                "Failed" | "Aborted" => {
                    return Err(
                        Error::new(ErrorKind::Upstream, "the Bulk API query job failed")
                            .permanent()
                            .with_context("job", id)
                            .with_context("state", &s.state)
                            .with_context("message", s.error.as_deref().unwrap_or("")),
                    );
                }
                _ => {}
            }
            if started.elapsed() + delay > timeout {
                return Err(Error::new(
                    ErrorKind::Upstream,
                    "the Bulk API query job is still running; the next sync goes on waiting",
                )
                .temporary()
                .with_context("job", id)
                .with_context("state", &s.state));
            }
            tokio::time::sleep(delay).await;
            delay = delay.mul_f32(1.5).min(Duration::from_secs(10));
        }
    }

    /// Deletes job `id` (best effort, after its last page).
    pub async fn bulk_delete(&self, id: &str) {
        let Ok(seg) = path_segment(id) else { return };
        let Ok(url) = self.data_url(&format!("/jobs/query/{seg}")).await else {
            return;
        };
        if let Ok(rb) = self.request(Method::DELETE, &url)
            && let Err(e) = self.send(rb).await
        {
            tracing::debug!(error = %e, "could not delete the finished bulk job");
        }
    }

    /// Reads one page of job `id`'s results (at `locator`, `max` records), parsing the CSV as
    /// it arrives.
    ///
    /// # Errors
    /// The policy's; `InvalidResponse` for a body that is not CSV, a page over
    /// [`MAX_BULK_PAGE_BYTES`] or far more rows than `max`.
    pub async fn bulk_results(
        &self,
        id: &str,
        locator: Option<&str>,
        max: u64,
        plan: &ObjectPlan,
        stream: &StreamId,
    ) -> Result<ResultsPage> {
        let url = self
            .data_url(&format!("/jobs/query/{}/results", path_segment(id)?))
            .await?;
        let max_s = max.to_string();
        let mut query = vec![("maxRecords", max_s.as_str())];
        if let Some(l) = locator {
            query.push(("locator", l));
        }
        let url = crate::api::with_query(&url, &query)?;
        let mut rb = self.request(Method::GET, &url)?.with_extension(Idempotent);
        if self.config().bulk_gzip {
            rb = rb.header(http::header::ACCEPT_ENCODING, "gzip");
        }
        let resp = self.send(rb).await?;
        let next_locator = resp
            .headers()
            .get("sforce-locator")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "null")
            .map(str::to_string);
        if let Some(l) = &next_locator
            && (l.len() > 256 || !l.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::invalid_response("Sforce-Locator is not a locator").permanent());
        }
        let gzip = resp
            .headers()
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let body = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.without_url()));
        let reader = tokio_util::io::StreamReader::new(body);
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let spec = RowSpec::new(plan, stream, &self.config().api_version);
        let max_rows = usize::try_from(max).unwrap_or(usize::MAX);
        let parsed = tokio::task::spawn_blocking(move || {
            let limited = bridge.take(MAX_BULK_PAGE_BYTES);
            if gzip {
                spec.parse(flate2::read::MultiGzDecoder::new(limited), max_rows)
            } else {
                spec.parse(limited, max_rows)
            }
        })
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Unexpected, "the CSV parser task failed").set_source(e)
        })??;
        Ok(ResultsPage {
            records: parsed.0,
            rejects: parsed.1,
            next_locator,
        })
    }
}

/// What a CSV row becomes: the plan's field kinds, the record `attributes`.
struct RowSpec {
    object: String,
    stream: StreamId,
    replication_key: String,
    url_prefix: String,
    kinds: std::collections::HashMap<String, FieldKind>,
}

type Parsed = (Vec<(RawJson, Mark)>, Vec<Reject>);

impl RowSpec {
    fn new(plan: &ObjectPlan, stream: &StreamId, api_version: &str) -> Self {
        RowSpec {
            object: plan.object.clone(),
            stream: stream.clone(),
            replication_key: plan.replication_key.clone(),
            url_prefix: format!("/services/data/v{api_version}/sobjects/{}/", plan.object),
            kinds: plan.kinds.clone(),
        }
    }

    /// Parses CSV from `input` into one buffer of JSON objects, then slices each record out.
    fn parse<R: Read>(&self, input: R, max_rows: usize) -> Result<Parsed> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(input);
        let headers = rdr.headers().map_err(csv_error)?.clone();
        let mut columns: Vec<(String, FieldKind)> = Vec::with_capacity(headers.len());
        let mut id_col = None;
        let mut rk_col = None;
        for (i, h) in headers.iter().enumerate() {
            let name = h.trim_start_matches('\u{feff}').to_string();
            if name == "Id" {
                id_col = Some(i);
            }
            if name == self.replication_key {
                rk_col = Some(i);
            }
            let kind = self.kinds.get(&name).copied().unwrap_or(FieldKind::Text);
            columns.push((name, kind));
        }
        let (Some(id_col), Some(rk_col)) = (id_col, rk_col) else {
            return Err(
                Error::invalid_response("bulk results have no Id or replication column")
                    .with_context("object", &self.object),
            );
        };
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        buf.push(b'[');
        let mut marks: Vec<Option<Mark>> = Vec::new();
        let mut rejects = Vec::new();
        let mut row = csv::StringRecord::new();
        let mut first = true;
        loop {
            let more = rdr.read_record(&mut row).map_err(csv_error)?;
            if !more {
                break;
            }
            if marks.len()
                >= max_rows.saturating_add(apex_connect_core::http::page_len_slack(max_rows))
            {
                return Err(Error::new(
                    ErrorKind::InvalidResponse,
                    "bulk results page holds far more rows than maxRecords",
                )
                .permanent()
                .with_context("max_records", max_rows));
            }
            let id = row.get(id_col).unwrap_or("").trim();
            let stamp = row.get(rk_col).and_then(parse_datetime);
            let start = buf.len();
            if !first {
                buf.push(b',');
            }
            let obj_start = buf.len();
            self.write_object(&mut buf, &columns, &row, id);
            let too_long = buf.len() - obj_start > MAX_BULK_ROW_BYTES;
            let valid_id = !id.is_empty() && id.len() <= 64;
            match (valid_id, stamp, too_long) {
                (true, Some(ms), false) => {
                    marks.push(Some(Mark::new(ms, id)));
                    first = false;
                }
                _ => {
                    let raw = Bytes::copy_from_slice(&buf[obj_start..]);
                    buf.truncate(start);
                    let why = if too_long {
                        "bulk row is longer than the limit"
                    } else if !valid_id {
                        "bulk row has no usable Id"
                    } else {
                        "bulk row's replication field is not a datetime"
                    };
                    let err = Error::invalid_response(why).with_context("object", &self.object);
                    rejects.push(Reject::unparsed(
                        self.stream.clone(),
                        valid_id.then(|| id.to_string()),
                        raw,
                        &err,
                    ));
                }
            }
        }
        buf.push(b']');
        let body = Bytes::from(buf);
        let items: Vec<&RawValue> = serde_json::from_slice(&body)
            .map_err(|e| Error::new(ErrorKind::Unexpected, "built invalid JSON").set_source(e))?;
        let records = items
            .iter()
            .zip(marks)
            .filter_map(|(r, m)| Some((RawJson::from_raw_in(&body, r), m?)))
            .collect();
        Ok((records, rejects))
    }

    fn write_object(
        &self,
        buf: &mut Vec<u8>,
        columns: &[(String, FieldKind)],
        row: &csv::StringRecord,
        id: &str,
    ) {
        buf.extend_from_slice(b"{\"attributes\":{\"type\":");
        write_json_str(buf, &self.object);
        buf.extend_from_slice(b",\"url\":");
        write_json_str(buf, &format!("{}{id}", self.url_prefix));
        buf.push(b'}');
        for (i, (name, kind)) in columns.iter().enumerate() {
            let v = row.get(i).unwrap_or("");
            buf.push(b',');
            write_json_str(buf, name);
            buf.push(b':');
            write_value(buf, v, *kind);
        }
        buf.push(b'}');
    }
}

fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Writes a CSV value as JSON by the field's kind; an empty value is `null` (Bulk sends empty
/// strings for nulls), a value that does not fit its kind is kept as text.
fn write_value(buf: &mut Vec<u8>, v: &str, kind: FieldKind) {
    if v.is_empty() {
        buf.extend_from_slice(b"null");
        return;
    }
    match kind {
        FieldKind::Bool if v.eq_ignore_ascii_case("true") => buf.extend_from_slice(b"true"),
        FieldKind::Bool if v.eq_ignore_ascii_case("false") => buf.extend_from_slice(b"false"),
        FieldKind::Int => {
            if let Ok(i) = v.trim().parse::<i64>() {
                buf.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(i) = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0)
                .and_then(apex_connect_core::lenient::f64_to_i64)
            {
                // Bulk sends "0.0" for integer fields.
                buf.extend_from_slice(i.to_string().as_bytes());
            } else {
                write_json_str(buf, v);
            }
        }
        FieldKind::Number => match v.trim().parse::<f64>().ok().filter(|f| f.is_finite()) {
            Some(f) => {
                let _ = serde_json::to_writer(&mut *buf, &f);
            }
            None => write_json_str(buf, v),
        },
        _ => write_json_str(buf, v),
    }
}

fn csv_error(e: csv::Error) -> Error {
    let temporary = matches!(e.kind(), csv::ErrorKind::Io(_));
    let err = Error::new(
        ErrorKind::InvalidResponse,
        if temporary {
            "bulk results ended early (connection closed)"
        } else {
            "bulk results are not the CSV expected"
        },
    );
    let err = if temporary {
        err.temporary()
    } else {
        err.permanent()
    };
    err.set_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ObjectDescribe;

    fn plan() -> ObjectPlan {
        let d = ObjectDescribe::parse(
            br#"{"name":"Account","fields":[{"name":"Id","type":"id"},{"name":"SystemModstamp","type":"datetime"},
            {"name":"Name","type":"string"},{"name":"NumberOfEmployees","type":"int"},{"name":"AnnualRevenue","type":"currency"},
            {"name":"IsDeleted","type":"boolean"}]}"#,
        )
        .unwrap();
        ObjectPlan::new(d, None).unwrap()
    }

    #[test]
    fn csv_rows_become_typed_json() {
        let spec = RowSpec::new(&plan(), &StreamId::from("Account"), "64.0");
        let csv = "\u{feff}Id,SystemModstamp,Name,NumberOfEmployees,AnnualRevenue,IsDeleted\n\
            001A,2024-01-01T00:00:00.000Z,\"Acme, \"\"Inc\"\"\",0.0,12.5,false\n\
            ,2024-01-01T00:00:00.000Z,NoId,1,1,false\n\
            001B,not a date,Bad,1,1,false\n\
            001C,2024-01-01T00:00:01.000Z,,x,,TRUE\n";
        let (records, rejects) = spec.parse(csv.as_bytes(), 10).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(rejects.len(), 2);
        let v = records[0].0.to_value().unwrap();
        assert_eq!(v["Name"], "Acme, \"Inc\"");
        assert_eq!(v["NumberOfEmployees"], 0);
        assert_eq!(v["AnnualRevenue"], 12.5);
        assert_eq!(v["IsDeleted"], false);
        assert_eq!(v["attributes"]["type"], "Account");
        let v = records[1].0.to_value().unwrap();
        assert!(v["Name"].is_null());
        assert_eq!(v["NumberOfEmployees"], "x");
        assert_eq!(v["IsDeleted"], true);
        assert_eq!(records[1].1, Mark::new(1_704_067_201_000, "001C"));
    }

    #[test]
    fn too_many_rows_and_bad_csv() {
        let spec = RowSpec::new(&plan(), &StreamId::from("Account"), "64.0");
        let mut csv = String::from("Id,SystemModstamp\n");
        for i in 0..20 {
            csv.push_str(&format!("001{i},2024-01-01T00:00:00.000Z\n"));
        }
        assert!(spec.parse(csv.as_bytes(), 10).is_err());
        assert!(spec.parse("Name\nx\n".as_bytes(), 10).is_err());
        assert!(
            spec.parse("Id,SystemModstamp\n1,2,3\n".as_bytes(), 10)
                .is_err()
        );
    }
}
