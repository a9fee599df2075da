//! Front's HTTP specifics: the [`FrontPolicy`] (rate headers, `_error` bodies, API hosts),
//! the reading of list answers ([`parse_list`]: raw slices of the body, bounded by the
//! `limit` asked for), and thin typed calls over the core [`HttpClient`].

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{
    HttpClient, PlatformPolicy, RateState, check_page_len, page_len_slack, retry_after,
    with_request_context, x_ratelimit_state,
};
use apex_connect_core::lenient::Lenient;
use apex_connect_core::{Error, ErrorKind, RawJson, Result};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use url::Url;

use crate::error::error_for_response;

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

/// Most results a list Front does not page (`/teammates`, `/inboxes`, a conversation's
/// comments, custom fields) may hold: such lists are short, and a page of millions of tiny
/// objects is refused instead of being held in memory.
pub const MAX_UNPAGED_RESULTS: usize = 10_000;

/// A list answer as received: the `next` link and the `_results` objects, each a slice of the
/// response body (no copy, no re-serialization).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RawList {
    /// `_pagination.next`: the next page's URL exactly as Front gave it; `None` at the end
    /// (a `null`, empty or absent `next`, or no `_pagination` at all).
    pub next: Option<String>,
    /// The objects of `_results`, in order, as received.
    pub items: Vec<RawJson>,
}

/// The parts of a list answer: `_pagination.next` and up to `cap` results, with the count of
/// all results.
struct Parts<T> {
    next: Option<String>,
    items: Vec<T>,
    total: usize,
}

#[derive(Deserialize)]
#[serde(field_identifier)]
enum ListKey {
    #[serde(rename = "_pagination")]
    Pagination,
    #[serde(rename = "_results")]
    Results,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct PaginationView {
    #[serde(default)]
    next: Option<String>,
}

struct TopSeed<T> {
    cap: usize,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for TopSeed<T> {
    type Value = Parts<T>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Parts<T>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for TopSeed<T> {
    type Value = Parts<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Front list answer (a JSON object with `_results`)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Parts<T>, A::Error> {
        let mut parts = Parts {
            next: None,
            items: Vec::new(),
            total: 0,
        };
        while let Some(key) = map.next_key::<ListKey>()? {
            match key {
                ListKey::Pagination => {
                    // An object (or `null`); a derived struct would also take an array.
                    let raw: Option<&'de RawValue> = map.next_value()?;
                    parts.next = match raw {
                        None => None,
                        Some(r) if r.get().starts_with('{') => {
                            serde_json::from_str::<PaginationView>(r.get())
                                .map_err(de::Error::custom)?
                                .next
                        }
                        Some(_) => {
                            return Err(de::Error::custom("`_pagination` is not an object"));
                        }
                    }
                    .filter(|n| !n.is_empty());
                }
                ListKey::Results => {
                    let (items, total) = map.next_value_seed(ResultsSeed::<T> {
                        cap: self.cap,
                        item: PhantomData,
                    })?;
                    parts.items = items;
                    parts.total = total;
                }
                ListKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

/// `_results`: at most `cap` items are kept; the rest are only counted (skipped unbuilt), so a
/// page of millions of tiny objects costs no more memory than its body.
struct ResultsSeed<T> {
    cap: usize,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for ResultsSeed<T> {
    type Value = (Vec<T>, usize);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ResultsSeed<T> {
    type Value = (Vec<T>, usize);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of results")
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok((Vec::new(), 0))
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok((Vec::new(), 0))
    }
    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(self.cap.min(128));
        while items.len() < self.cap {
            match seq.next_element::<T>()? {
                Some(v) => items.push(v),
                None => {
                    let n = items.len();
                    return Ok((items, n));
                }
            }
        }
        let mut total = items.len();
        while seq.next_element::<IgnoredAny>()?.is_some() {
            total = total.saturating_add(1);
        }
        Ok((items, total))
    }
}

fn parse_parts<'de, T: Deserialize<'de>>(body: &'de [u8], limit: usize) -> Result<Parts<T>> {
    let cap = limit.saturating_add(page_len_slack(limit));
    let mut de = serde_json::Deserializer::from_slice(body);
    let parts = TopSeed::<T> {
        cap,
        item: PhantomData,
    }
    .deserialize(&mut de)
    .and_then(|p| de.end().map(|()| p))
    .map_err(|e| {
        Error::invalid_response("Front list answer is not readable")
            .with_context("connector", crate::NAME)
            .permanent()
            .set_source(e)
    })?;
    check_page_len(parts.total, limit).map_err(|e| e.with_context("connector", crate::NAME))?;
    Ok(parts)
}

/// Reads a list answer (`{"_pagination": {"next": ..}, "_links": .., "_results": [..]}`) of
/// a request that asked for `limit` results: the `next` link and the objects, each a slice of
/// `body`. Nothing else is read; the objects are not parsed (see [`crate::models`]).
///
/// # Errors
/// `InvalidResponse` (permanent) when `body` is not such an object, `_pagination.next` is
/// neither a string nor `null`, `_results` is neither an array nor `null`, or the page holds
/// far more results than `limit` ([`check_page_len`]: memory stays bounded by the body, not
/// by the number of objects in it).
pub fn parse_list(body: &Bytes, limit: usize) -> Result<RawList> {
    let parts: Parts<&RawValue> = parse_parts(body, limit)?;
    Ok(RawList {
        next: parts.next,
        items: parts
            .items
            .into_iter()
            .map(|r| RawJson::from_raw_in(body, r))
            .collect(),
    })
}

/// An object of a conversations page of which only the `id` is read: a JSON string, else
/// `None` (the other fields are skipped unbuilt, in the same pass).
struct IdOnly(Option<String>);

impl<'de> Deserialize<'de> for IdOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = IdOnly;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a conversation")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<IdOnly, A::Error> {
                let mut id = None;
                while let Some(key) = map.next_key::<IdKey>()? {
                    match key {
                        IdKey::Id if id.is_none() => {
                            id = map.next_value::<Lenient<String>>()?.0;
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(IdOnly(id.filter(|s| !s.is_empty())))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<IdOnly, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IdOnly(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<IdOnly, E> {
                Ok(IdOnly(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<IdOnly, E> {
                Ok(IdOnly(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<IdOnly, E> {
                Ok(IdOnly(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<IdOnly, E> {
                Ok(IdOnly(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<IdOnly, E> {
                Ok(IdOnly(None))
            }
            fn visit_unit<E: de::Error>(self) -> std::result::Result<IdOnly, E> {
                Ok(IdOnly(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum IdKey {
    Id,
    #[serde(other)]
    Other,
}

/// A conversations page read for its ids (the nested walks).
#[derive(Debug, Clone, Default)]
pub(crate) struct IdPage {
    /// The `next` link.
    pub(crate) next: Option<String>,
    /// The conversations' ids, in list order (objects without a string id left out).
    pub(crate) ids: Vec<String>,
    /// Objects without a readable id.
    pub(crate) skipped: usize,
}

pub(crate) fn parse_id_list(body: &[u8], limit: usize) -> Result<IdPage> {
    let parts: Parts<IdOnly> = parse_parts(body, limit)?;
    let n = parts.items.len();
    let ids: Vec<String> = parts.items.into_iter().filter_map(|i| i.0).collect();
    Ok(IdPage {
        next: parts.next,
        skipped: n - ids.len(),
        ids,
    })
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

    /// The body of one list page: the first page of `path` with `query`, or a `next` link
    /// exactly as Front gave it (its origin is checked by [`HttpClient::follow_url`] first).
    async fn page_body(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
    ) -> Result<Bytes> {
        match next {
            Some(link) => {
                let url = self.http.follow_url(link)?;
                self.http.get_bytes(url.as_str(), &[]).await
            }
            None => self.http.get_bytes(path, query).await,
        }
    }

    /// One list page of a request that asks for `limit` results (see [`parse_list`]).
    ///
    /// # Errors
    /// `InvalidResponse` for a link to another origin than the API's, or a page that
    /// [`parse_list`] refuses; the HTTP stack's kinds otherwise.
    pub async fn list(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
        limit: usize,
    ) -> Result<RawList> {
        let body = self.page_body(path, query, next).await?;
        parse_list(&body, limit)
    }

    /// A conversations page read for its ids only, in one pass.
    pub(crate) async fn list_ids(
        &self,
        path: &str,
        query: &[(&str, String)],
        next: Option<&str>,
        limit: usize,
    ) -> Result<IdPage> {
        let body = self.page_body(path, query, next).await?;
        parse_id_list(&body, limit)
    }

    /// `GET path`, the body as received (one JSON value).
    ///
    /// # Errors
    /// The HTTP stack's kinds (`NotFound` for a missing object); `InvalidResponse` for a body
    /// that is not JSON.
    pub async fn get_raw(&self, path: &str) -> Result<RawJson> {
        let body = self.http.get_bytes(path, &[]).await?;
        RawJson::parse(body).map_err(|e| e.with_context("connector", crate::NAME))
    }

    /// [`get_raw`](Self::get_raw), with a 404 as `None`.
    ///
    /// # Errors
    /// As [`get_raw`](Self::get_raw), other than `NotFound`.
    pub async fn get_raw_opt(&self, path: &str) -> Result<Option<RawJson>> {
        match self.get_raw(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET path` as a JSON value (cold paths: `/me`).
    ///
    /// # Errors
    /// The HTTP stack's kinds; `NotFound` for a missing object.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.http.get_json(path, &[]).await
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
    fn list_items_are_slices_of_the_body() {
        let body = Bytes::from_static(
            br#"{"_pagination": {"next": "https://acme.api.frontapp.com/tags?page_token=2"},
                 "_links": {"self": "x"}, "_results": [ {"id": "tag_1", "x": [1, {"y": null}]} , 7, "s"]}"#,
        );
        let list = parse_list(&body, 100).unwrap();
        assert_eq!(
            list.next.as_deref(),
            Some("https://acme.api.frontapp.com/tags?page_token=2")
        );
        assert_eq!(list.items.len(), 3);
        assert_eq!(
            list.items[0].as_str(),
            r#"{"id": "tag_1", "x": [1, {"y": null}]}"#
        );
        assert_eq!(list.items[1].as_str(), "7");
        // No copy: the item points into the body.
        let start = body.as_ptr() as usize;
        let item = list.items[0].as_bytes().as_ptr() as usize;
        assert!(item > start && item < start + body.len());

        for (text, next) in [
            (r#"{"_results": []}"#, None),
            (r#"{"_pagination": null, "_results": null}"#, None),
            (r#"{"_pagination": {"next": null}, "_results": []}"#, None),
            (r#"{"_pagination": {"next": ""}, "_results": []}"#, None),
            (r#"{"_pagination": {}, "_results": [], "_total": 3}"#, None),
        ] {
            let l = parse_list(&Bytes::from(text), 10).unwrap();
            assert_eq!((l.next, l.items.len()), (next, 0), "{text}");
        }
        for bad in [
            "[]",
            "null",
            r#"{"_results": {"id": 1}}"#,
            r#"{"_results": 5}"#,
            r#"{"_pagination": {"next": 5}, "_results": []}"#,
            r#"{"_pagination": [], "_results": []}"#,
            r#"{"_results": [1, 2"#,
            r#"{"_results": []} trailing"#,
        ] {
            let e = parse_list(&Bytes::from(bad), 10).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{bad}");
            assert!(!e.is_temporary());
        }
    }

    /// Issue 8: a page holding far more results than asked for is an error, and reading it
    /// keeps no more than the limit (plus slack) of them.
    #[test]
    fn pages_far_larger_than_the_limit_are_refused() {
        let mut text = String::from(r#"{"_results": ["#);
        for i in 0..1_000 {
            if i > 0 {
                text.push(',');
            }
            text.push_str(&format!(r#"{{"id":"c{i}"}}"#));
        }
        text.push_str(r#"], "_pagination": {"next": null}}"#);
        let body = Bytes::from(text);
        let e = parse_list(&body, 100).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert_eq!(e.context_value("results"), Some("1000"));
        assert_eq!(e.context_value("limit"), Some("100"));
        assert_eq!(parse_list(&body, 1_000).unwrap().items.len(), 1_000);
        assert_eq!(
            parse_list(&body, 950).unwrap().items.len(),
            1_000,
            "10 % slack"
        );
        let e = parse_id_list(&body, 100).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    }

    #[test]
    fn id_lists_keep_string_ids_only() {
        let body = br#"{"_results": [{"id": "cnv_1", "subject": {"deep": [1]}}, {"id": 5}, [1],
            {"x": 1}, {"id": "cnv_2", "id": "dup"}, {"id": ""}, null],
            "_pagination": {"next": "https://acme.api.frontapp.com/conversations?page_token=2"}}"#;
        let p = parse_id_list(body, 100).unwrap();
        assert_eq!(p.ids, ["cnv_1", "cnv_2"]);
        assert_eq!(p.skipped, 5);
        assert!(p.next.unwrap().ends_with("page_token=2"));
    }

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
