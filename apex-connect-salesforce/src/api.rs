//! Salesforce's HTTP specifics: the [`SalesforcePolicy`] (error arrays, `Sforce-Limit-Info`),
//! the daily API usage ([`ApiUsage`]), and [`SalesforceApi`]: calls on the token's
//! `instance_url`, added at run time to the connection's API hosts.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use apex_connect_core::http::{
    HttpClient, PlatformPolicy, RateState, path_segment, retry_after, with_request_context,
};
use apex_connect_core::lenient::{LenientBool, LenientStr, LenientU64};
use apex_connect_core::{Error, ErrorKind, RawJson, Result, TokenManager};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use http::{HeaderMap, Method, StatusCode};
use reqwest::Response;
use reqwest_middleware::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use url::Url;

use crate::NAME;
use crate::config::{SalesforceConfig, check_origin, is_loopback};
use crate::error::error_for_response;

/// The header carrying the org's daily API usage: `api-usage=USED/MAX`.
pub const LIMIT_INFO: &str = "sforce-limit-info";
/// The largest JSON body read into memory (query pages, describe, collection results).
pub const MAX_JSON_BODY: usize = 64 * 1024 * 1024;

/// Parses `Sforce-Limit-Info` (`api-usage=18/5000`, possibly with other comma-separated
/// entries): `(used, max)`. Numbers that do not fit a `u64`, a zero maximum, or anything else
/// unexpected give `None`.
pub fn parse_limit_info(value: &str) -> Option<(u64, u64)> {
    value.split(',').find_map(|part| {
        let rest = part.trim().strip_prefix("api-usage=")?;
        let (used, max) = rest.split_once('/')?;
        let used: u64 = used.trim().parse().ok()?;
        let max: u64 = max.trim().parse().ok()?;
        (max > 0).then_some((used, max))
    })
}

/// The org's daily API usage as the last answer reported it (shared by every clone of a
/// connector).
#[derive(Debug, Default)]
pub struct ApiUsage {
    used: AtomicU64,
    max: AtomicU64,
}

impl ApiUsage {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `Sforce-Limit-Info` from an answer's headers, if present.
    pub fn observe(&self, headers: &HeaderMap) {
        if let Some((used, max)) = headers
            .get(LIMIT_INFO)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_limit_info)
        {
            self.used.store(used, Ordering::Relaxed);
            self.max.store(max, Ordering::Relaxed);
        }
    }

    /// `(used, max)`, once an answer reported them.
    pub fn get(&self) -> Option<(u64, u64)> {
        let max = self.max.load(Ordering::Relaxed);
        (max > 0).then(|| (self.used.load(Ordering::Relaxed), max))
    }

    /// Whether `used` has reached `share` of `max` (exact integer arithmetic, no overflow).
    pub fn reached(&self, share: f64) -> bool {
        let Some((used, max)) = self.get() else {
            return false;
        };
        // share in basis points (0 < share <= 1 is validated by the settings).
        let bp = (share.clamp(0.0, 1.0) * 10_000.0).round() as u128;
        u128::from(used) * 10_000 >= u128::from(max) * bp
    }
}

/// What the core HTTP stack needs to know about Salesforce.
///
/// - Error bodies are JSON arrays of `{message, errorCode, fields}`; the code decides the
///   kind (`INVALID_SESSION_ID` unauthenticated, `REQUEST_LIMIT_EXCEEDED` rate limited and
///   permanent with an hour's hint, `QUERY_TIMEOUT` upstream permanent, ...), see
///   [`crate::error::kind_for`]. [`crate::SalesforceApiError`] is the source.
/// - Every answer's `Sforce-Limit-Info` updates the shared [`ApiUsage`], errors included.
/// - No per-window rate headers; no fixed API hosts (the instance host is added at run time).
#[derive(Debug, Clone, Default)]
pub struct SalesforcePolicy {
    usage: Arc<ApiUsage>,
}

impl SalesforcePolicy {
    /// A policy recording usage into `usage`.
    pub fn new(usage: Arc<ApiUsage>) -> Self {
        SalesforcePolicy { usage }
    }
}

impl PlatformPolicy for SalesforcePolicy {
    fn rate_state(&self, headers: &HeaderMap) -> Option<RateState> {
        self.usage.observe(headers);
        None
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        method: &Method,
        url: &Url,
    ) -> Error {
        self.usage.observe(headers);
        let hint = retry_after(headers, SystemTime::now());
        let err = error_for_response(status.as_u16(), body, hint);
        with_request_context(err, method, Some(status), url)
    }
}

/// How a connector authenticates.
#[derive(Clone)]
pub enum SalesforceAuth {
    /// OAuth tokens from core's manager (refresh, rotation, JWT bearer, client credentials);
    /// the instance comes from the token answer.
    OAuth(Arc<TokenManager>),
    /// A static access token (a session id) for a known instance.
    Static {
        /// The access token.
        token: SecretString,
        /// The instance URL.
        instance_url: Url,
    },
}

impl fmt::Debug for SalesforceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SalesforceAuth::OAuth(m) => f.debug_tuple("OAuth").field(m.connection()).finish(),
            SalesforceAuth::Static { instance_url, .. } => f
                .debug_struct("Static")
                .field("token", &"[redacted]")
                .field("instance_url", &instance_url.origin().ascii_serialization())
                .finish(),
        }
    }
}

/// Verifies a token answer's `signature`: Base64 HMAC-SHA256 of `id` + `issued_at` keyed with
/// the client secret, compared in constant time.
pub fn signature_matches(id: &str, issued_at: &str, signature: &str, client_secret: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(client_secret.as_bytes()) else {
        return false;
    };
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// The signature a token answer carries for `id` + `issued_at` (simulators, tests).
pub fn sign_identity(id: &str, issued_at: &str, client_secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(client_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The user id and org id in an identity URL (`.../id/<orgId>/<userId>`).
pub fn identity_ids(id_url: &str) -> Option<(String, String)> {
    let url = Url::parse(id_url).ok()?;
    let mut segs: Vec<&str> = url.path_segments()?.filter(|s| !s.is_empty()).collect();
    let user = segs.pop()?;
    let org = segs.pop()?;
    (segs.last() == Some(&"id")).then(|| (org.to_string(), user.to_string()))
}

/// Whether `host` matches an exact host or a `*.suffix` pattern.
fn host_matches(host: &str, pattern: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim().to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|p| p.len() > 1 && p.ends_with('.')),
        None => host == pattern,
    }
}

/// One page of a REST query answer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueryPage {
    /// The records, each a slice of the page body.
    pub records: Vec<RawJson>,
    /// `totalSize`: records matching the whole query.
    pub total_size: Option<u64>,
    /// The `nextRecordsUrl` (relative), when more pages follow.
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct QueryPageView<'a> {
    #[serde(rename = "totalSize", default)]
    total_size: LenientU64,
    #[serde(default)]
    done: LenientBool,
    #[serde(rename = "nextRecordsUrl", borrow, default)]
    next: LenientStr<'a>,
    #[serde(borrow)]
    records: Vec<&'a RawValue>,
}

impl QueryPage {
    /// Parses a query answer, slicing each record out of `body` without copying.
    ///
    /// # Errors
    /// `InvalidResponse` when the body has no `records` array, or claims more pages without
    /// a `nextRecordsUrl`.
    pub fn parse(body: &Bytes) -> Result<QueryPage> {
        let v: QueryPageView<'_> =
            serde_json::from_slice(body).map_err(|e| Error::from_json(e, "query page"))?;
        let next = v.next.non_empty().map(str::to_string);
        let done = v.done.0.unwrap_or(next.is_none());
        if !done && next.is_none() {
            return Err(Error::invalid_response(
                "query page says it is not done but has no nextRecordsUrl",
            ));
        }
        Ok(QueryPage {
            records: v
                .records
                .iter()
                .map(|r| RawJson::from_raw_in(body, r))
                .collect(),
            total_size: v.total_size.0,
            next: if done { None } else { next },
        })
    }
}

/// Typed calls to the REST API over the connection's [`HttpClient`], on the instance host.
pub struct SalesforceApi {
    http: HttpClient,
    auth: SalesforceAuth,
    config: Arc<SalesforceConfig>,
    usage: Arc<ApiUsage>,
    client_secret: Option<SecretString>,
    /// The instance origin in use and the token signature it was verified with.
    instance: RwLock<Option<(String, Option<String>)>>,
    versions_checked: AtomicBool,
}

impl fmt::Debug for SalesforceApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceApi")
            .field("http", &self.http)
            .field("auth", &self.auth)
            .field("api_version", &self.config.api_version)
            .field("usage", &self.usage.get())
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

impl SalesforceApi {
    /// Calls through `http` (built with a [`SalesforcePolicy`] sharing `usage`).
    pub fn new(
        http: HttpClient,
        auth: SalesforceAuth,
        config: Arc<SalesforceConfig>,
        usage: Arc<ApiUsage>,
        client_secret: Option<SecretString>,
    ) -> Self {
        SalesforceApi {
            http,
            auth,
            config,
            usage,
            client_secret,
            instance: RwLock::new(None),
            versions_checked: AtomicBool::new(false),
        }
    }

    /// The HTTP client.
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// The configuration.
    pub fn config(&self) -> &SalesforceConfig {
        &self.config
    }

    /// The org's daily API usage, as last reported.
    pub fn usage(&self) -> &Arc<ApiUsage> {
        &self.usage
    }

    /// The token's identity URL, when the connection uses OAuth and the answer had one.
    pub async fn identity_url(&self) -> Option<String> {
        match &self.auth {
            SalesforceAuth::OAuth(m) => m.token().await.ok()?.identity.map(|i| i.id),
            SalesforceAuth::Static { .. } => None,
        }
    }

    fn instance_allowed(&self, url: &Url) -> bool {
        let host = url.host_str().unwrap_or("");
        is_loopback(url)
            || self.config.login_url.host_str() == Some(host)
            || self
                .config
                .instance_hosts
                .iter()
                .any(|p| host_matches(host, p))
    }

    fn remember_instance(&self, url: &Url, signature: Option<String>) -> Result<String> {
        check_origin("instance_url", url).map_err(|e| {
            Error::new(
                ErrorKind::Unauthenticated,
                "the token's instance_url is not a usable origin",
            )
            .permanent()
            .set_source(e)
        })?;
        if !self.instance_allowed(url) {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                "the token's instance_url is not on a Salesforce domain (see the instance_hosts setting)",
            )
            .permanent()
            .with_context("host", url.host_str().unwrap_or("")));
        }
        let host = url.host_str().unwrap_or("");
        let port = url.port_or_known_default().unwrap_or(443);
        self.http.add_api_host(&format!("{host}:{port}"))?;
        let origin = url.origin().ascii_serialization();
        *self.instance.write().unwrap_or_else(|p| p.into_inner()) =
            Some((origin.clone(), signature));
        Ok(origin)
    }

    /// The instance origin to call (`https://acme.my.salesforce.com`): from the current token
    /// (re-read on every call, so a refresh that moves the org is followed), its `signature`
    /// verified when a client secret is configured.
    ///
    /// # Errors
    /// `Unauthenticated` when the token has no usable `instance_url` or a signature that does
    /// not match; the token manager's errors.
    pub async fn instance(&self) -> Result<String> {
        match &self.auth {
            SalesforceAuth::Static { instance_url, .. } => {
                if let Some((o, _)) = self
                    .instance
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    return Ok(o.clone());
                }
                self.remember_instance(instance_url, None)
            }
            SalesforceAuth::OAuth(m) => {
                let t = m.token().await?;
                let raw = t.instance_url.as_deref().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Unauthenticated,
                        "the token answer has no instance_url",
                    )
                    .permanent()
                })?;
                let sig = t.identity.as_ref().and_then(|i| i.signature.clone());
                if let Some((o, seen)) = self
                    .instance
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    && seen == &sig
                    && Url::parse(raw).is_ok_and(|u| u.origin().ascii_serialization() == *o)
                {
                    return Ok(o.clone());
                }
                if let (Some(secret), Some(identity)) = (&self.client_secret, &t.identity)
                    && let Some(signature) = &identity.signature
                    && !signature_matches(
                        &identity.id,
                        &identity.issued_at,
                        signature,
                        secret.expose_secret(),
                    )
                {
                    return Err(Error::new(
                        ErrorKind::Unauthenticated,
                        "the token answer's signature does not match its identity (id, issued_at)",
                    )
                    .permanent()
                    .with_context("connector", NAME));
                }
                let url = Url::parse(raw.trim()).map_err(|e| {
                    Error::new(
                        ErrorKind::Unauthenticated,
                        "the token's instance_url is not a URL",
                    )
                    .permanent()
                    .set_source(e)
                })?;
                self.remember_instance(&url, sig)
            }
        }
    }

    /// `https://instance/services/data/vXX.X{path}`.
    ///
    /// # Errors
    /// As [`instance`](Self::instance).
    pub async fn data_url(&self, path: &str) -> Result<String> {
        Ok(format!(
            "{}/services/data/v{}{path}",
            self.instance().await?,
            self.config.api_version
        ))
    }

    /// A request on the full stack.
    ///
    /// # Errors
    /// `InvalidResponse` for a URL off the API hosts.
    pub fn request(&self, method: Method, url: &str) -> Result<RequestBuilder> {
        self.http.request(method, url)
    }

    /// Sends a request, records `Sforce-Limit-Info`, and returns the answer.
    ///
    /// # Errors
    /// The HTTP stack's and the policy's.
    pub async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = self.http.send(rb).await?;
        self.usage.observe(resp.headers());
        Ok(resp)
    }

    /// Sends a request and reads its body (at most [`MAX_JSON_BODY`]).
    ///
    /// # Errors
    /// As [`send`](Self::send); `InvalidResponse` for a body over the cap or cut short.
    pub async fn send_bytes(&self, rb: RequestBuilder) -> Result<(HeaderMap, Bytes)> {
        let resp = self.send(rb).await?;
        let headers = resp.headers().clone();
        let body = read_capped(resp, MAX_JSON_BODY).await?;
        Ok((headers, body))
    }

    /// Checks once that the org supports the configured API version (`GET /services/data/`,
    /// which does not count toward limits).
    ///
    /// # Errors
    /// `Config` naming the versions the org supports when it does not.
    pub async fn check_version(&self) -> Result<()> {
        if self.versions_checked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let url = format!("{}/services/data/", self.instance().await?);
        let (_, body) = self.send_bytes(self.request(Method::GET, &url)?).await?;
        #[derive(Deserialize)]
        struct V<'a> {
            #[serde(borrow, default)]
            version: LenientStr<'a>,
        }
        let list: Vec<V<'_>> =
            serde_json::from_slice(&body).map_err(|e| Error::from_json(e, "versions"))?;
        let versions: Vec<&str> = list.iter().filter_map(|v| v.version.as_deref()).collect();
        if !versions.contains(&self.config.api_version.as_str()) {
            let shown: Vec<&str> = versions.iter().rev().take(8).copied().collect();
            return Err(
                Error::config("the org does not support the configured API version")
                    .with_context("api_version", &self.config.api_version)
                    .with_context("supported_newest", shown.join(",")),
            );
        }
        self.versions_checked.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The describe answer of `object`.
    ///
    /// # Errors
    /// `NotFound` for an object the org does not have (or the user cannot see).
    pub async fn describe(&self, object: &str) -> Result<Bytes> {
        let url = self
            .data_url(&format!("/sobjects/{}/describe/", path_segment(object)?))
            .await?;
        Ok(self.send_bytes(self.request(Method::GET, &url)?).await?.1)
    }

    /// Starts a query (`queryAll` when `all`).
    ///
    /// # Errors
    /// The policy's (`QUERY_TIMEOUT`, `INVALID_FIELD`, ...).
    pub async fn query(&self, soql: &str, all: bool) -> Result<QueryPage> {
        let url = self
            .data_url(if all { "/queryAll/" } else { "/query/" })
            .await?;
        let url = with_query(&url, &[("q", soql)])?;
        let rb = self.request(Method::GET, &url)?.header(
            "sforce-query-options",
            format!("batchSize={}", self.config.query_batch_size),
        );
        let (_, body) = self.send_bytes(rb).await?;
        let page = QueryPage::parse(&body)?;
        apex_connect_core::http::check_page_len(page.records.len(), 2000)?;
        Ok(page)
    }

    /// The length of the URL of a query for `soql` (to split wide objects).
    pub fn query_url_len(&self, soql: &str) -> usize {
        let encoded: usize = url::form_urlencoded::byte_serialize(soql.as_bytes())
            .map(str::len)
            .sum();
        // https://<instance>/services/data/vNN.N/queryAll/?q=
        120 + encoded
    }

    /// Follows a `nextRecordsUrl` (relative, on the instance host).
    ///
    /// # Errors
    /// `InvalidResponse` for a link that is not a `/services/data/` path on the instance;
    /// `InvalidInput` (`INVALID_QUERY_LOCATOR`) when the locator expired.
    pub async fn query_more(&self, next: &str) -> Result<QueryPage> {
        let next = next.trim();
        if !next.starts_with("/services/data/") || next.contains("..") {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                "nextRecordsUrl is not a /services/data/ path on the instance",
            )
            .permanent());
        }
        let url = format!("{}{next}", self.instance().await?);
        let url = self.http.follow_url(&url)?;
        let rb = self.request(Method::GET, url.as_str())?.header(
            "sforce-query-options",
            format!("batchSize={}", self.config.query_batch_size),
        );
        let (_, body) = self.send_bytes(rb).await?;
        let page = QueryPage::parse(&body)?;
        apex_connect_core::http::check_page_len(page.records.len(), 2000)?;
        Ok(page)
    }

    /// Reads `fields` of the records `ids` of `object` in one call (`POST
    /// /composite/sobjects/{object}`, up to 2000 ids, no URL length limit): one entry per id,
    /// in order, `None` for a record that is gone.
    ///
    /// # Errors
    /// The policy's.
    pub async fn retrieve(
        &self,
        object: &str,
        ids: &[String],
        fields: &[String],
    ) -> Result<(Bytes, Vec<Option<RawJson>>)> {
        let url = self
            .data_url(&format!("/composite/sobjects/{}", path_segment(object)?))
            .await?;
        let rb = self
            .request(Method::POST, &url)?
            .with_extension(apex_connect_core::http::Idempotent)
            .json(&serde_json::json!({"ids": ids, "fields": fields}));
        let (_, body) = self.send_bytes(rb).await?;
        let items: Vec<&RawValue> =
            serde_json::from_slice(&body).map_err(|e| Error::from_json(e, "retrieve"))?;
        if items.len() != ids.len() {
            return Err(Error::invalid_response(
                "retrieve answered another number of records than ids asked for",
            )
            .with_context("asked", ids.len())
            .with_context("got", items.len()));
        }
        let out = items
            .iter()
            .map(|r| (r.get().trim() != "null").then(|| RawJson::from_raw_in(&body, r)))
            .collect();
        Ok((body.clone(), out))
    }

    /// `getDeleted`: the ids of `object` deleted between `start_ms` and `end_ms`, and the
    /// `latestDateCovered` (ms).
    ///
    /// # Errors
    /// The policy's (`INVALID_REPLICATION_DATE` when the start is too old).
    pub async fn get_deleted(
        &self,
        object: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(Vec<(String, i64)>, Option<i64>)> {
        let url = self
            .data_url(&format!("/sobjects/{}/deleted/", path_segment(object)?))
            .await?;
        let url = with_query(
            &url,
            &[
                ("start", &crate::models::soql_datetime(start_ms)),
                ("end", &crate::models::soql_datetime(end_ms)),
            ],
        )?;
        let rb = self.request(Method::GET, &url)?;
        let (_, body) = self.send_bytes(rb).await?;
        #[derive(Deserialize)]
        struct Deleted<'a> {
            #[serde(borrow, default)]
            id: LenientStr<'a>,
            #[serde(rename = "deletedDate", borrow, default)]
            deleted: LenientStr<'a>,
        }
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(rename = "deletedRecords", borrow, default)]
            records: Vec<Deleted<'a>>,
            #[serde(rename = "latestDateCovered", borrow, default)]
            latest: LenientStr<'a>,
        }
        let a: Answer<'_> =
            serde_json::from_slice(&body).map_err(|e| Error::from_json(e, "getDeleted"))?;
        let ids = a
            .records
            .iter()
            .filter_map(|d| {
                let id = d.id.non_empty()?;
                let ms = d
                    .deleted
                    .as_deref()
                    .and_then(crate::models::parse_datetime)
                    .unwrap_or(end_ms);
                Some((id.to_string(), ms))
            })
            .collect();
        Ok((
            ids,
            a.latest.as_deref().and_then(crate::models::parse_datetime),
        ))
    }
}

/// `url` with `pairs` appended to its query string (form-encoded).
///
/// # Errors
/// `InvalidInput` when `url` does not parse.
pub fn with_query(url: &str, pairs: &[(&str, &str)]) -> Result<String> {
    let mut u =
        Url::parse(url).map_err(|e| Error::invalid_input("invalid request URL").set_source(e))?;
    if !pairs.is_empty() {
        u.query_pairs_mut().extend_pairs(pairs.iter().copied());
    }
    Ok(u.into())
}

/// Reads a body of at most `max` bytes.
pub(crate) async fn read_capped(mut resp: Response, max: usize) -> Result<Bytes> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(Error::new(
            ErrorKind::InvalidResponse,
            "response body exceeds the limit",
        )
        .permanent()
        .with_context("limit", max));
    }
    let mut buf = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len().saturating_add(c.len()) > max {
                    return Err(Error::new(
                        ErrorKind::InvalidResponse,
                        "response body exceeds the limit",
                    )
                    .permanent()
                    .with_context("limit", max));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::InvalidResponse,
                    "response body ended early (connection closed)",
                )
                .temporary()
                .set_source(e.without_url()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info() {
        assert_eq!(parse_limit_info("api-usage=18/5000"), Some((18, 5000)));
        assert_eq!(
            parse_limit_info("per-app-api-usage=1/2(appName=x), api-usage=7/100"),
            Some((7, 100))
        );
        assert_eq!(parse_limit_info("api-usage=1/0"), None);
        assert_eq!(
            parse_limit_info("api-usage=99999999999999999999999/1"),
            None
        );
        assert_eq!(parse_limit_info("api-usage=-1/10"), None);
        assert_eq!(parse_limit_info("garbage"), None);
        let u = ApiUsage::new();
        assert!(!u.reached(0.8));
        let mut h = HeaderMap::new();
        h.insert(LIMIT_INFO, "api-usage=79999/100000".parse().unwrap());
        u.observe(&h);
        assert!(!u.reached(0.8));
        h.insert(LIMIT_INFO, "api-usage=80000/100000".parse().unwrap());
        u.observe(&h);
        assert!(u.reached(0.8));
        h.insert(
            LIMIT_INFO,
            format!("api-usage={}/{}", u64::MAX, u64::MAX)
                .parse()
                .unwrap(),
        );
        u.observe(&h);
        assert!(u.reached(1.0));
    }

    #[test]
    fn signatures() {
        let sig = sign_identity(
            "https://login.salesforce.com/id/00D/005",
            "1278448384422",
            "s3cret",
        );
        assert!(signature_matches(
            "https://login.salesforce.com/id/00D/005",
            "1278448384422",
            &sig,
            "s3cret"
        ));
        assert!(!signature_matches(
            "https://login.salesforce.com/id/00D/006",
            "1278448384422",
            &sig,
            "s3cret"
        ));
        assert!(!signature_matches(
            "https://login.salesforce.com/id/00D/005",
            "1278448384422",
            &sig,
            "other"
        ));
        assert!(!signature_matches("x", "1", "not base64!", "s"));
        assert_eq!(
            identity_ids("https://login.salesforce.com/id/00Dx0000000001/005x0000000001"),
            Some(("00Dx0000000001".into(), "005x0000000001".into()))
        );
        assert_eq!(identity_ids("https://x/y"), None);
    }

    #[test]
    fn instance_host_patterns() {
        assert!(host_matches("acme.my.salesforce.com", "*.salesforce.com"));
        assert!(!host_matches("salesforce.com.evil.io", "*.salesforce.com"));
        assert!(!host_matches("evilsalesforce.com", "*.salesforce.com"));
        assert!(host_matches("na1.salesforce.com", "na1.salesforce.com"));
    }

    #[test]
    fn query_pages() {
        let body = Bytes::from_static(
            br#"{"totalSize":3,"done":false,"nextRecordsUrl":"/services/data/v64.0/query/01g-2","records":[{"Id":"1"},{"Id":"2"}]}"#,
        );
        let p = QueryPage::parse(&body).unwrap();
        assert_eq!(p.records.len(), 2);
        assert_eq!(p.total_size, Some(3));
        assert_eq!(p.next.as_deref(), Some("/services/data/v64.0/query/01g-2"));
        let bad = Bytes::from_static(br#"{"done":false,"records":[]}"#);
        assert!(QueryPage::parse(&bad).is_err());
        let last = Bytes::from_static(br#"{"totalSize":"x","done":true,"records":[]}"#);
        assert!(QueryPage::parse(&last).unwrap().next.is_none());
    }
}
