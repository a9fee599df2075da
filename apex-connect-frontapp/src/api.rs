//! Front's HTTP specifics: the [`FrontPolicy`] (rate headers, `_error` bodies, API hosts) and
//! thin typed calls over the core [`HttpClient`].

use std::time::{Duration, SystemTime};

use apex_connect_core::http::{
    HttpClient, PlatformPolicy, RateState, retry_after, with_request_context, x_ratelimit_state,
};
use apex_connect_core::{Error, ErrorKind, Result};
use http::{HeaderMap, Method, StatusCode};
use serde_json::Value;
use url::Url;

use crate::error::error_for_response;
use crate::models::ListResponse;

/// Front's production API host.
pub const API_HOST: &str = "api2.frontapp.com";
/// Per-company API hosts (`<company>.api.frontapp.com`), used in `next` links.
pub const COMPANY_HOSTS: &str = "*.api.frontapp.com";
/// Header Front adds to 429s of endpoints with burst limits, naming the tier exceeded.
pub const TIER_HEADER: &str = "x-front-tier";

/// What the core HTTP stack needs to know about Front.
///
/// - Rate state from `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset`
///   (a Unix timestamp in seconds), so the gate slows before Front says 429.
/// - A 429 waits for `Retry-After` (seconds; read by the stack), else until the reset when
///   nothing remains. A burst 429 (`x-front-tier`) carries `Retry-After` even with budget
///   left, which the stack honours the same way; the tier is recorded as error context.
/// - `_error` bodies (object or array) become the message, with [`crate::FrontApiError`] as
///   the source; statuses map to kinds as in [`crate::FrontApiError::kind_for_status`].
/// - API hosts: `api2.frontapp.com` and `*.api.frontapp.com`.
///
/// The connector does not use conversation search (`/conversations/search`), whose budget is
/// 40 % of the company's; a host that adds search calls should give them their own
/// [`RateGate`](apex_connect_core::http::RateGate) at 40 % of the company limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrontPolicy;

impl PlatformPolicy for FrontPolicy {
    fn rate_state(&self, headers: &HeaderMap) -> Option<RateState> {
        x_ratelimit_state(headers, SystemTime::now())
    }

    fn retry_hint(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.rate_state(headers)
                .filter(|s| s.remaining == 0)
                .map(|s| s.reset_after)
                .or(Some(Duration::from_secs(1)))
        } else {
            None
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
        let hint =
            retry_after(headers, SystemTime::now()).or_else(|| self.retry_hint(status, headers));
        let mut err = error_for_response(status.as_u16(), body, hint);
        if let Some(tier) = headers.get(TIER_HEADER).and_then(|v| v.to_str().ok()) {
            err = err.with_context("front_tier", tier.to_string());
        }
        with_request_context(err, method, Some(status), url)
    }

    fn api_hosts(&self) -> Vec<String> {
        vec![API_HOST.to_string(), COMPANY_HOSTS.to_string()]
    }
}

/// Typed calls to the Core API over a configured [`HttpClient`].
#[derive(Debug, Clone)]
pub struct FrontApi {
    http: HttpClient,
}

impl FrontApi {
    /// Calls through `http` (built with [`FrontPolicy`]).
    pub fn new(http: HttpClient) -> Self {
        FrontApi { http }
    }

    /// The HTTP client.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// One list page: the first page of `path` with `query`, or a `next` link exactly as
    /// Front gave it (its host is checked by [`HttpClient::follow_url`] first).
    ///
    /// # Errors
    /// `InvalidResponse` for a link to a host that is not an API host, a malformed or
    /// truncated body; the HTTP stack's kinds otherwise.
    pub async fn list(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
    ) -> Result<ListResponse> {
        self.list_as(path, query, next).await
    }

    /// [`list`](Self::list) decoded into any shape (the nested walks read only the ids of a
    /// conversations page).
    pub(crate) async fn list_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
    ) -> Result<T> {
        match next {
            Some(link) => {
                let url = self.http.follow_url(link)?;
                self.http.get_json(url.as_str(), &[]).await
            }
            None => self.http.get_json(path, query).await,
        }
    }

    /// `GET path` as JSON.
    ///
    /// # Errors
    /// The HTTP stack's kinds; `NotFound` for a missing object.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.http.get_json(path, &[]).await
    }

    /// `GET path`, with a 404 as `None`.
    ///
    /// # Errors
    /// The HTTP stack's kinds other than `NotFound`.
    pub async fn get_opt(&self, path: &str) -> Result<Option<Value>> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `method path` with a JSON body; an empty answer (204) is `Value::Null`.
    ///
    /// # Errors
    /// The HTTP stack's kinds (`InvalidInput` from `_error` bodies, `NotFound`, ...).
    pub async fn send(&self, method: Method, path: &str, body: &Value) -> Result<Value> {
        self.http.request_json(method, path, Some(body)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn classify_front_errors() {
        let url = Url::parse("https://api2.frontapp.com/conversations/cnv_1?x=SECRET").unwrap();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("4"));
        h.insert(TIER_HEADER, HeaderValue::from_static("tier1"));
        let e = FrontPolicy.classify(StatusCode::TOO_MANY_REQUESTS, &h, b"", &Method::GET, &url);
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
        assert_eq!(e.context_value("front_tier"), Some("tier1"));
        assert!(!e.to_string().contains("SECRET"));

        let body =
            br#"{"_error":[{"status":404,"title":"Not found","message":"No conversation"}]}"#;
        let e = FrontPolicy.classify(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            body,
            &Method::GET,
            &url,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("No conversation"), "{e}");
        assert!(e.downcast_source::<crate::FrontApiError>().is_some());
        assert_eq!(
            FrontPolicy.api_hosts(),
            vec![API_HOST.to_string(), COMPANY_HOSTS.to_string()]
        );
        // Ids go into paths through core's one encoder: a space is `%20`, never `+`.
        let seg = |id| apex_connect_core::http::path_segment(id).unwrap();
        assert_eq!(seg("a/b"), "a%2Fb");
        assert_eq!(seg("ad eu"), "ad%20eu");
    }
}
