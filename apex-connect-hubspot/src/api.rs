//! The HubSpot HTTP layer: [`HubSpotPolicy`] (rate headers, 429 policies, error bodies) and
//! [`HubSpotApi`], typed calls to the CRM v3/v4 endpoints the connector uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{
    Credentials, HttpClient, Idempotent, PlatformPolicy, Quota, RateGate, RateState, RetryConfig,
    classify_status, path_segment, retry_after,
};
use apex_connect_core::webhook::unix_ms;
use apex_connect_core::{Error, Result};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use url::Url;

use crate::error::HubSpotApiError;
use crate::models::{CollectionPage, HubSpotObject, Owner};

/// The most inputs of one batch call.
pub const BATCH_LIMIT: usize = 100;

/// HubSpot's rules for the HTTP stack.
///
/// # Behavior
/// - `rate_state` reads `X-HubSpot-RateLimit-Remaining` with `-Max` and
///   `-Interval-Milliseconds` (the rolling window: when nothing is left, the gate waits one
///   window), and `X-HubSpot-RateLimit-Daily-Remaining` (0: wait until the next UTC midnight,
///   the earliest the account's midnight can be, so the gate fails fast with `RateLimited`).
/// - A 429 without headers (the search API sends none) hints 1 s (the secondly limit).
/// - Error bodies `{status, message, correlationId, category, policyName}` map to kinds by
///   category (`VALIDATION_ERROR` -> `InvalidInput`, `OBJECT_NOT_FOUND` -> `NotFound`, ...);
///   a 429's wait follows its `policyName` (`DAILY`, `TEN_SECONDLY_ROLLING`, `SECONDLY`).
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
        let remaining = header_u64(headers, "x-hubspot-ratelimit-remaining")?;
        let interval =
            header_u64(headers, "x-hubspot-ratelimit-interval-milliseconds").unwrap_or(10_000);
        Some(RateState {
            limit: header_u64(headers, "x-hubspot-ratelimit-max"),
            remaining,
            reset_after: Duration::from_millis(interval),
        })
    }

    fn retry_hint(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        if status != StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        match self.rate_state(headers) {
            Some(s) if s.remaining == 0 => Some(s.reset_after),
            Some(_) => Some(Duration::from_secs(1)),
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
/// one for the search API (its own gate: 5 requests/s, no rate headers) and one for the rest.
#[derive(Debug, Clone)]
pub struct HubSpotApi {
    http: HttpClient,
    search: HttpClient,
}

/// How to build a [`HubSpotApi`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ApiOptions {
    /// Requests per 10 s (everything but search).
    pub requests_per_10s: u32,
    /// Search requests per second.
    pub search_requests_per_second: u32,
    /// Retry configuration of both clients.
    pub retry: RetryConfig,
    /// An explicit general gate (shared by every connector of the same account), if any.
    pub gate: Option<RateGate>,
    /// An explicit search gate, if any.
    pub search_gate: Option<RateGate>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            requests_per_10s: 100,
            search_requests_per_second: 5,
            retry: RetryConfig::default(),
            gate: None,
            search_gate: None,
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
        let gate = match options.gate {
            Some(g) => g,
            None => {
                let n = options.requests_per_10s;
                if n == 0 {
                    return Err(Error::config("requests_per_10s must be at least 1"));
                }
                RateGate::new(n, Duration::from_secs(10), (n / 10).max(1))?
            }
        };
        let sgate = match options.search_gate {
            Some(g) => g,
            None => search_gate(options.search_requests_per_second)?,
        };
        let build = |gate: RateGate| {
            HttpClient::builder(base_url)
                .credentials(credentials.clone())
                .policy(Arc::new(HubSpotPolicy))
                .rate_gate(gate)
                .retry(options.retry.clone())
                .build()
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

    /// `GET /crm/v3/objects/{object}` (one page).
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
    ) -> Result<CollectionPage<HubSpotObject>> {
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
            .get_json(&format!("/crm/v3/objects/{}", path_segment(object)?), &q)
            .await
    }

    /// `POST /crm/v3/objects/{object}/search` with `body`.
    ///
    /// # Errors
    /// The HTTP stack's kinds; `InvalidInput` past the 10,000-result cap.
    pub async fn search(
        &self,
        object: &str,
        body: &Value,
    ) -> Result<CollectionPage<HubSpotObject>> {
        let rb = self
            .search
            .request(
                Method::POST,
                &format!("/crm/v3/objects/{}/search", path_segment(object)?),
            )?
            .with_extension(Idempotent)
            .json(body);
        self.search.send_json(rb).await
    }

    /// `POST /crm/v3/objects/{object}/batch/read` in chunks of 100; objects not found (a 207
    /// with errors) are left out.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn batch_read(
        &self,
        object: &str,
        ids: &[String],
        properties: &[String],
    ) -> Result<Vec<HubSpotObject>> {
        self.batch_read_by(object, ids, properties, None).await
    }

    /// As [`HubSpotApi::batch_read`], naming objects by a unique property (`email`).
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn batch_read_by(
        &self,
        object: &str,
        ids: &[String],
        properties: &[String],
        id_property: Option<&str>,
    ) -> Result<Vec<HubSpotObject>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(BATCH_LIMIT) {
            let inputs: Vec<Value> = chunk.iter().map(|id| json!({ "id": id })).collect();
            let mut body =
                json!({ "properties": properties, "propertiesWithHistory": [], "inputs": inputs });
            if let Some(p) = id_property {
                body["idProperty"] = json!(p);
            }
            let rb = self
                .http
                .request(
                    Method::POST,
                    &format!("/crm/v3/objects/{}/batch/read", path_segment(object)?),
                )?
                .with_extension(Idempotent)
                .json(&body);
            let page: CollectionPage<HubSpotObject> = self.http.send_json(rb).await?;
            out.extend(page.results);
        }
        Ok(out)
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

    /// `GET /crm/v3/properties/{object}`: the property definitions.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn properties(&self, object: &str) -> Result<Vec<Value>> {
        let page: CollectionPage<Value> = self
            .http
            .get_json(
                &format!("/crm/v3/properties/{}", path_segment(object)?),
                &[("archived", "false".into())],
            )
            .await?;
        Ok(page.results)
    }

    /// `GET /crm/v3/owners` (one page).
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn owners(&self, limit: u32, after: Option<&str>) -> Result<CollectionPage<Owner>> {
        let mut q: Vec<(&str, String)> =
            vec![("limit", limit.to_string()), ("archived", "false".into())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        self.http.get_json("/crm/v3/owners", &q).await
    }

    /// `POST /crm/v4/associations/{from}/{to}/batch/read` for `ids`: `(from id, [(to id,
    /// associationTypes)])`. Pages of more than 500 associations per object are followed.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn associations(
        &self,
        from: &str,
        to: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Vec<(String, Value)>)>> {
        let mut out: Vec<(String, Vec<(String, Value)>)> = Vec::new();
        let mut inputs: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
        let mut rounds = 0;
        while !inputs.is_empty() && rounds < 100 {
            rounds += 1;
            let rb = self
                .http
                .request(
                    Method::POST,
                    &format!(
                        "/crm/v4/associations/{}/{}/batch/read",
                        path_segment(from)?,
                        path_segment(to)?
                    ),
                )?
                .with_extension(Idempotent)
                .json(&json!({ "inputs": inputs }));
            let page: CollectionPage<Value> = self.http.send_json(rb).await?;
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
                if let Some(after) = r
                    .get("paging")
                    .and_then(|p| p.get("next"))
                    .and_then(|n| n.get("after"))
                    .and_then(Value::as_str)
                {
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
        let _: Value = self
            .http
            .get_json("/crm/v3/objects/contacts", &[("limit", "1".into())])
            .await?;
        Ok(())
    }
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
    fn rate_state_from_hubspot_headers() {
        let p = HubSpotPolicy;
        let s = p
            .rate_state(&h(&[
                ("x-hubspot-ratelimit-max", "100"),
                ("x-hubspot-ratelimit-remaining", "0"),
                ("x-hubspot-ratelimit-interval-milliseconds", "10000"),
            ]))
            .unwrap();
        assert_eq!(
            (s.limit, s.remaining, s.reset_after),
            (Some(100), 0, Duration::from_secs(10))
        );
        let s = p
            .rate_state(&h(&[
                ("x-hubspot-ratelimit-daily", "250000"),
                ("x-hubspot-ratelimit-daily-remaining", "0"),
            ]))
            .unwrap();
        assert_eq!(s.remaining, 0);
        assert!(s.reset_after <= Duration::from_secs(86_400));
        assert!(p.rate_state(&HeaderMap::new()).is_none());
        assert_eq!(
            p.retry_hint(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()),
            Some(Duration::from_secs(1))
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
