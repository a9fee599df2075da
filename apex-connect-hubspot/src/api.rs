//! The HubSpot HTTP layer: [`HubSpotPolicy`] (rate headers, 429 policies, error bodies) and
//! [`HubSpotApi`], typed calls to the CRM v3/v4 endpoints the connector uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::collections::HashMap;

use apex_connect_core::http::{
    Clock, Credentials, DEFAULT_MAX_BODY_BYTES, HttpClient, Idempotent, LinkGuard, PlatformPolicy,
    Quota, RateGate, RateState, RateWindow, RetryConfig, check_page_len, classify_status,
    path_segment, retry_after,
};
use apex_connect_core::webhook::unix_ms;
use apex_connect_core::{Error, ErrorKind, Result};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};
use url::Url;

use crate::error::HubSpotApiError;

/// The most inputs of one batch call.
pub const BATCH_LIMIT: usize = 100;

/// HubSpot's rules for the HTTP stack.
///
/// # Behavior
/// - `rate_window` reads the rolling ten-second window: `X-HubSpot-RateLimit-Max`,
///   `-Interval-Milliseconds` (default 10,000) and `-Remaining`; the connector's
///   [rolling gate](RateGate::rolling) learns the account's limit from it and waits for the
///   oldest request of the window to leave it, never a whole interval.
/// - `rate_state` reads only the daily budget: `X-HubSpot-RateLimit-Daily-Remaining` 0 waits
///   until the next UTC midnight (the earliest the account's midnight can be), so the gate
///   fails fast with `RateLimited`.
/// - A 429 hints 1 s (the rolling window frees slots continuously; the search API's limit
///   is per second and its answers carry no headers), or the time to midnight for the daily
///   budget.
/// - Error bodies `{status, message, correlationId, category, policyName}` map to kinds by
///   category (`VALIDATION_ERROR` -> `InvalidInput`, `OBJECT_NOT_FOUND` -> `NotFound`, ...);
///   a 429's error carries the wait its `policyName` calls for (`DAILY`,
///   `TEN_SECONDLY_ROLLING`, `SECONDLY`).
#[derive(Debug, Clone, Copy, Default)]
pub struct HubSpotPolicy;

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn until_utc_midnight(now: SystemTime) -> Duration {
    let day = 86_400_000i64;
    let left = day - unix_ms(now).rem_euclid(day);
    Duration::from_millis(left.max(1) as u64)
}

impl PlatformPolicy for HubSpotPolicy {
    fn rate_state(&self, headers: &HeaderMap) -> Option<RateState> {
        if header_u64(headers, "x-hubspot-ratelimit-daily-remaining") == Some(0) {
            return Some(RateState {
                limit: header_u64(headers, "x-hubspot-ratelimit-daily"),
                remaining: 0,
                reset_after: until_utc_midnight(SystemTime::now()),
            });
        }
        None
    }

    fn rate_window(&self, headers: &HeaderMap) -> Option<RateWindow> {
        let max = header_u64(headers, "x-hubspot-ratelimit-max")?;
        let interval =
            header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds").unwrap_or(10_000);
        let w = RateWindow::new(max, Duration::from_millis(interval));
        Some(match header_u64(headers, "x-hubspot-ratelimit-remaining") {
            Some(r) => w.with_remaining(r),
            None => w,
        })
    }

    fn retry_hint(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        if status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        match self.rate_state(headers) {
            Some(daily) => Some(daily.reset_after),
            None => Some(Duration::from_secs(1)),
        }
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        method: &Method,
        url: &Url,
    ) -> Error {
        let hint = retry_after(headers, SystemTime::now());
        let Some(api) = HubSpotApiError::parse(status.as_u16(), body) else {
            return classify_status(
                status,
                headers,
                body,
                method,
                url,
                hint.or_else(|| self.retry_hint(status, headers)),
            );
        };
        let wait = if status == StatusCode::TOO_MANY_REQUESTS {
            hint.or_else(|| api.rate_limit_wait(unix_ms(SystemTime::now())))
        } else {
            hint
        };
        let mut e = api.into_error().with_context("status", status.as_u16());
        e = if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            e.temporary()
        } else {
            e.permanent()
        };
        if let Some(w) = wait {
            e = e.with_retry_after(w);
        }
        e
    }

    fn api_hosts(&self) -> Vec<String> {
        vec!["api.hubapi.com".into()]
    }
}

/// Typed calls to HubSpot's CRM endpoints, over two [`HttpClient`]s sharing the credentials:
/// one for the search API (its own gate: 5 requests/s, no rate headers) and one for the rest
/// (a rolling-window gate that learns the account's limit from the answers).
///
/// Calls that return objects return the response body as it came ([`Bytes`]); the
/// connector slices its records out of it ([`crate::models::parse_page`]).
#[derive(Debug, Clone)]
pub struct HubSpotApi {
    http: HttpClient,
    search: HttpClient,
}

/// The requests per ten seconds a gate starts from when no setting gives the limit: the
/// lowest HubSpot documents (private apps of Free and Starter accounts); the first answer's
/// `X-HubSpot-RateLimit-Max` replaces it.
pub const DEFAULT_REQUESTS_PER_10S: u32 = 100;

/// The length of HubSpot's rolling window (until its headers say otherwise).
pub const TEN_SECONDS: Duration = Duration::from_secs(10);

/// How to build a [`HubSpotApi`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApiOptions {
    /// The most requests per 10 s (everything but search), whatever the platform reports;
    /// `None`: learn the account's limit from `X-HubSpot-RateLimit-Max` (starting at
    /// [`DEFAULT_REQUESTS_PER_10S`]).
    pub requests_per_10s: Option<u32>,
    /// Search requests per second.
    pub search_requests_per_second: u32,
    /// Retry configuration of both clients.
    pub retry: RetryConfig,
    /// An explicit general gate (shared by every connector of the same account), if any.
    pub gate: Option<RateGate>,
    /// An explicit search gate, if any.
    pub search_gate: Option<RateGate>,
    /// The clock of both clients and of the gates built here (tests: a virtual clock).
    pub clock: Option<Arc<dyn Clock>>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            requests_per_10s: None,
            search_requests_per_second: 5,
            retry: RetryConfig::default(),
            gate: None,
            search_gate: None,
            clock: None,
        }
    }
}

/// The search gate for `per_second` requests: evenly spaced (no burst) with a 5% margin, so
/// no one-second window of the platform ever sees more than `per_second`.
///
/// # Errors
/// `Config` when `per_second` is zero.
pub fn search_gate(per_second: u32) -> Result<RateGate> {
    if per_second == 0 {
        return Err(Error::config(
            "search_requests_per_second must be at least 1",
        ));
    }
    let period = Duration::from_secs(1) / per_second * 21 / 20;
    let quota = Quota::with_period(period).ok_or_else(|| Error::config("search rate too high"))?;
    Ok(RateGate::from_quota(quota))
}

/// The gate for everything but search: a rolling window of ten seconds, starting at
/// `requests_per_10s` (or [`DEFAULT_REQUESTS_PER_10S`]) and following the limit HubSpot's
/// answers report, never above `requests_per_10s` when it is given.
///
/// # Errors
/// `Config` when `requests_per_10s` is zero.
pub fn window_gate(requests_per_10s: Option<u32>) -> Result<RateGate> {
    match requests_per_10s {
        Some(0) => Err(Error::config("requests_per_10s must be at least 1")),
        Some(n) => Ok(RateGate::rolling(n, TEN_SECONDS)?.with_window_cap(n, TEN_SECONDS)),
        None => RateGate::rolling(DEFAULT_REQUESTS_PER_10S, TEN_SECONDS),
    }
}

/// Reads a response body whole, at most `cap` bytes.
async fn read_body(resp: reqwest::Response, cap: usize) -> Result<Bytes> {
    let mut resp = resp;
    let hint = resp
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(cap);
    let mut buf = BytesMut::with_capacity(hint);
    loop {
        let chunk = resp.chunk().await.map_err(|e| {
            Error::new(ErrorKind::Network, "the response body was cut short")
                .temporary()
                .with_context("connector", crate::NAME)
                .set_source(e.without_url())
        })?;
        let Some(chunk) = chunk else { break };
        if buf.len().saturating_add(chunk.len()) > cap {
            return Err(
                Error::invalid_response("the response body is larger than allowed")
                    .permanent()
                    .with_context("max_body_bytes", cap),
            );
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

impl HubSpotApi {
    /// Clients for `base_url` with `credentials`.
    ///
    /// # Errors
    /// `Config` for a bad base URL or rate.
    pub fn new(
        base_url: &str,
        credentials: Arc<dyn Credentials>,
        options: ApiOptions,
    ) -> Result<Self> {
        let clocked = |g: RateGate| match &options.clock {
            Some(c) => g.with_clock(c.clone()),
            None => g,
        };
        let gate = match options.gate {
            Some(g) => g,
            None => clocked(window_gate(options.requests_per_10s)?),
        };
        let sgate = match options.search_gate {
            Some(g) => g,
            None => clocked(search_gate(options.search_requests_per_second)?),
        };
        let build = |gate: RateGate| {
            let mut b = HttpClient::builder(base_url)
                .credentials(credentials.clone())
                .policy(Arc::new(HubSpotPolicy))
                .rate_gate(gate)
                .retry(options.retry.clone());
            if let Some(c) = &options.clock {
                b = b.clock(c.clone());
            }
            b.build()
        };
        Ok(HubSpotApi {
            http: build(gate)?,
            search: build(sgate)?,
        })
    }

    /// The client for everything but search.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The client for the search API.
    pub fn search_http(&self) -> &HttpClient {
        &self.search
    }

    /// Requests sent by both clients (retries included).
    pub fn requests_sent(&self) -> u64 {
        self.http.stats().snapshot().requests_sent + self.search.stats().snapshot().requests_sent
    }

    async fn post_bytes(&self, client: &HttpClient, path: &str, body: &Value) -> Result<Bytes> {
        let rb = client
            .request(Method::POST, path)?
            .with_extension(Idempotent)
            .header(http::header::ACCEPT, "application/json")
            .json(body);
        let resp = client.send(rb).await?;
        read_body(resp, DEFAULT_MAX_BODY_BYTES).await
    }

    /// `GET /crm/v3/objects/{object}` (one page), the body as received.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn list_objects(
        &self,
        object: &str,
        limit: u32,
        after: Option<&str>,
        properties: Option<&str>,
        associations: &[&str],
    ) -> Result<Bytes> {
        let mut q: Vec<(&str, String)> =
            vec![("limit", limit.to_string()), ("archived", "false".into())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        if let Some(p) = properties {
            q.push(("properties", p.to_string()));
        }
        if !associations.is_empty() {
            q.push(("associations", associations.join(",")));
        }
        self.http
            .get_bytes(&format!("/crm/v3/objects/{}", path_segment(object)?), &q)
            .await
    }

    /// `POST /crm/v3/objects/{object}/search` with `body`, the answer as received.
    ///
    /// # Errors
    /// The HTTP stack's kinds; `InvalidInput` past the 10,000-result cap.
    pub async fn search(&self, object: &str, body: &Value) -> Result<Bytes> {
        self.post_bytes(
            &self.search,
            &format!("/crm/v3/objects/{}/search", path_segment(object)?),
            body,
        )
        .await
    }

    /// `POST /crm/v3/objects/{object}/batch/read` for at most 100 `ids` with `properties`
    /// (by a unique property when `id_property` is given); the answer as received (objects
    /// not found are left out of its `results`, named in its `errors`).
    ///
    /// # Errors
    /// `InvalidInput` for more than 100 ids; the HTTP stack's kinds.
    pub async fn batch_read(
        &self,
        object: &str,
        ids: &[String],
        properties: &[String],
        id_property: Option<&str>,
    ) -> Result<Bytes> {
        if ids.len() > BATCH_LIMIT {
            return Err(Error::invalid_input("a batch read takes at most 100 ids"));
        }
        let inputs: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
        let mut body =
            json!({ "properties": properties, "propertiesWithHistory": [], "inputs": inputs });
        if let Some(p) = id_property {
            body["idProperty"] = json!(p);
        }
        self.post_bytes(
            &self.http,
            &format!("/crm/v3/objects/{}/batch/read", path_segment(object)?),
            &body,
        )
        .await
    }

    /// `POST /crm/v3/objects/{object}/batch/{action}` with `inputs` (at most 100); returns
    /// the answer body (200/201 or 207 with `errors`).
    ///
    /// # Errors
    /// The HTTP stack's kinds for a whole-batch failure.
    pub async fn batch_write(
        &self,
        object: &str,
        action: &str,
        inputs: Vec<Value>,
    ) -> Result<Value> {
        let body = json!({ "inputs": inputs });
        self.http
            .request_json(
                Method::POST,
                &format!(
                    "/crm/v3/objects/{}/batch/{}",
                    path_segment(object)?,
                    path_segment(action)?
                ),
                Some(&body),
            )
            .await
    }

    /// `GET /crm/v3/properties/{object}`: the property definitions, the body as received.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn properties(&self, object: &str) -> Result<Bytes> {
        self.http
            .get_bytes(
                &format!("/crm/v3/properties/{}", path_segment(object)?),
                &[("archived", "false".into())],
            )
            .await
    }

    /// `GET /crm/v3/owners` (one page), the body as received.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn owners(&self, limit: u32, after: Option<&str>) -> Result<Bytes> {
        let mut q: Vec<(&str, String)> =
            vec![("limit", limit.to_string()), ("archived", "false".into())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        self.http.get_bytes("/crm/v3/owners", &q).await
    }

    /// `POST /crm/v4/associations/{from}/{to}/batch/read` for `ids`: `(from id, [(to id,
    /// associationTypes)])`. Pages of more than 500 associations per object are followed
    /// (each `after` token once: a [`LinkGuard`] per object refuses a repeat).
    ///
    /// # Errors
    /// The HTTP stack's kinds; `InvalidResponse` for a paging cycle or a page far larger
    /// than asked.
    pub async fn associations(
        &self,
        from: &str,
        to: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Vec<(String, Value)>)>> {
        let mut out: Vec<(String, Vec<(String, Value)>)> = Vec::new();
        let mut guards: HashMap<String, LinkGuard> = HashMap::new();
        let mut inputs: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
        let path = format!(
            "/crm/v4/associations/{}/{}/batch/read",
            path_segment(from)?,
            path_segment(to)?
        );
        while !inputs.is_empty() {
            let asked = inputs.len();
            let body = self
                .post_bytes(&self.http, &path, &json!({ "inputs": inputs }))
                .await?;
            let page: CollectionPage<Value> = serde_json::from_slice(&body).map_err(|e| {
                Error::invalid_response("HubSpot's association answer is not its shape")
                    .permanent()
                    .set_source(e)
            })?;
            check_page_len(page.results.len(), asked)?;
            inputs = Vec::new();
            for r in page.results {
                let Some(from_id) = id_of(r.get("from").and_then(|f| f.get("id"))) else {
                    continue;
                };
                let tos: Vec<(String, Value)> = r
                    .get("to")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| {
                        let id = id_of(t.get("toObjectId"))?;
                        Some((
                            id,
                            t.get("associationTypes").cloned().unwrap_or(Value::Null),
                        ))
                    })
                    .collect();
                let brought = tos.len();
                if let Some(after) = r
                    .get("paging")
                    .and_then(|p| p.get("next"))
                    .and_then(|n| n.get("after"))
                    .and_then(Value::as_str)
                {
                    let guard = guards.entry(from_id.clone()).or_default();
                    guard.record_page(brought)?;
                    guard.check_link(after)?;
                    inputs.push(json!({ "id": from_id, "after": after }));
                }
                match out.iter_mut().find(|(f, _)| *f == from_id) {
                    Some((_, v)) => v.extend(tos),
                    None => out.push((from_id, tos)),
                }
            }
        }
        Ok(out)
    }

    /// `GET /crm/v3/objects/contacts?limit=1`: a cheap probe of the credentials.
    ///
    /// # Errors
    /// `Unauthenticated` / `PermissionDenied` when they do not work.
    pub async fn probe(&self) -> Result<()> {
        let _: IgnoredAny = self
            .http
            .get_json("/crm/v3/objects/contacts", &[("limit", "1".into())])
            .await?;
        Ok(())
    }
}

/// One page of a v3 collection answer, decoded (for the cold paths that read answers as
/// [`Value`]s: associations).
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct CollectionPage<T> {
    /// The results.
    #[serde(default = "Vec::new")]
    pub results: Vec<T>,
}

/// An id given as a JSON string or number.
pub fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn rate_window_and_daily_state_from_hubspot_headers() {
        let p = HubSpotPolicy;
        let h10 = h(&[
            ("x-hubspot-ratelimit-max", "100"),
            ("x-hubspot-ratelimit-remaining", "0"),
            ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
        ]);
        let w = p.rate_window(&h10).unwrap();
        assert_eq!(
            (w.limit, w.remaining, w.interval),
            (100, Some(0), Duration::from_secs(10))
        );
        // The ten-second window is not a fixed-window budget: no pause of a whole interval.
        assert!(p.rate_state(&h10).is_none());
        assert_eq!(
            p.retry_hint(StatusCode::TOO_MANY_REQUESTS, &h10),
            Some(Duration::from_secs(1))
        );
        let w = p
            .rate_window(&h(&[("x-hubspot-ratelimit-max", "190")]))
            .unwrap();
        assert_eq!(
            (w.limit, w.remaining, w.interval),
            (190, None, Duration::from_secs(10))
        );
        let daily = h(&[
            ("x-hubspot-ratelimit-daily", "250000"),
            ("x-hubspot-ratelimit-daily-remaining", "0"),
        ]);
        let s = p.rate_state(&daily).unwrap();
        assert_eq!(s.remaining, 0);
        assert!(s.reset_after <= Duration::from_secs(86_400));
        // A daily 429 waits until the reset (the same midnight, read a moment later).
        let d = p.retry_hint(StatusCode::TOO_MANY_REQUESTS, &daily).unwrap();
        let apart = d.abs_diff(s.reset_after);
        // (Unless UTC midnight passed between the two reads.)
        assert!(apart < Duration::from_secs(5) || apart > Duration::from_secs(86_000));
        assert!(p.rate_state(&HeaderMap::new()).is_none());
        assert!(p.rate_window(&HeaderMap::new()).is_none());
        assert_eq!(
            p.retry_hint(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()),
            Some(Duration::from_secs(1))
        );
        assert_eq!(p.retry_hint(StatusCode::OK, &h10), None);
        // Hostile values do not read (or read bounded by the gate).
        assert!(
            p.rate_window(&h(&[("x-hubspot-ratelimit-max", "-5")]))
                .is_none()
        );
    }

    #[test]
    fn classify_uses_body_category_and_policy() {
        let url = Url::parse("https://api.hubapi.com/crm/v3/objects/contacts").unwrap();
        let e = HubSpotPolicy.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            br#"{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"c","policyName":"TEN_SECONDLY_ROLLING"}"#,
            &Method::GET,
            &url,
        );
        assert_eq!(e.kind(), apex_connect_core::ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(10)));
        let e = HubSpotPolicy.classify(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            br#"{"status":"error","message":"Object not found.","correlationId":"d","category":"OBJECT_NOT_FOUND"}"#,
            &Method::GET,
            &url,
        );
        assert_eq!(e.kind(), apex_connect_core::ErrorKind::NotFound);
        assert!(!e.is_temporary());
        assert_eq!(e.context_value("correlation_id"), Some("d"));
    }
}
