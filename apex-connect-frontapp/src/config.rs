//! `FrontConfig`: everything about a connection that is not code.

use std::fmt;
use std::time::Duration;

use apex_connect_core::{Error, Result};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::models::streams;

/// The production API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api2.frontapp.com";
/// Largest `limit` Front accepts on list endpoints.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Largest `limit` Front accepts on `/events`.
pub const MAX_EVENTS_PAGE_SIZE: u32 = 15;
/// Default of [`FrontConfig::nested_concurrency`].
pub const DEFAULT_NESTED_CONCURRENCY: u32 = 8;
/// Largest [`FrontConfig::nested_concurrency`].
pub const MAX_NESTED_CONCURRENCY: u32 = 64;

/// Configuration of a Front connection (serde, so hosts can load it from their own files).
///
/// `Debug` never shows the API token.
///
/// # Examples
/// ```
/// use apex_connect_frontapp::FrontConfig;
/// let cfg: FrontConfig = serde_json::from_str(r#"{"page_size": 50, "lookback_secs": 120}"#).unwrap();
/// assert_eq!(cfg.base_url, "https://api2.frontapp.com");
/// assert_eq!(cfg.page_size, 50);
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct FrontConfig {
    /// API base URL; default `https://api2.frontapp.com`. Pagination links on
    /// `<company>.api.frontapp.com` are followed as well.
    pub base_url: String,
    /// An API token (Settings > Developers > API tokens). Never serialized.
    #[serde(skip_serializing)]
    pub api_token: Option<SecretString>,
    /// `limit` on list endpoints (1..=100; default 100).
    pub page_size: u32,
    /// `limit` on `/events` (1..=15; default 15).
    pub events_page_size: u32,
    /// How far back each incremental walk re-reads, in seconds (default 60): events and
    /// updates can become visible late.
    pub lookback_secs: u64,
    /// The streams to offer; default all of [`streams::ALL`].
    pub streams: Vec<String>,
    /// The events stream starts here (Unix ms); `None`: the beginning of the feed.
    pub events_since_ms: Option<i64>,
    /// At most this many requests (the conversations page and the child lists: messages or
    /// comments of one conversation each) per `read` of a nested stream (default 25). Child
    /// lists are fetched in batches of `nested_concurrency`; a page ends after the batch that
    /// brings it to `page_size` records or more.
    pub nested_requests_per_read: u32,
    /// How many conversations' child lists a nested read fetches at once (1..=64, default 8).
    /// Records are still emitted in walk order and the cursor still names the exact resume
    /// position; every request passes the shared rate gate, so this never exceeds the
    /// company's budget, it only fills it.
    pub nested_concurrency: u32,
    /// More hosts whose `next` links may be followed (exact or `*.suffix`), for proxies and
    /// tests.
    pub extra_api_hosts: Vec<String>,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_token: None,
            page_size: MAX_PAGE_SIZE,
            events_page_size: MAX_EVENTS_PAGE_SIZE,
            lookback_secs: 60,
            streams: streams::ALL.iter().map(|s| s.to_string()).collect(),
            events_since_ms: None,
            nested_requests_per_read: 25,
            nested_concurrency: DEFAULT_NESTED_CONCURRENCY,
            extra_api_hosts: Vec::new(),
        }
    }
}

impl fmt::Debug for FrontConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontConfig")
            .field("base_url", &self.base_url)
            .field("api_token", &self.api_token.as_ref().map(|_| "[redacted]"))
            .field("page_size", &self.page_size)
            .field("events_page_size", &self.events_page_size)
            .field("lookback_secs", &self.lookback_secs)
            .field("streams", &self.streams)
            .field("events_since_ms", &self.events_since_ms)
            .field("nested_requests_per_read", &self.nested_requests_per_read)
            .field("nested_concurrency", &self.nested_concurrency)
            .field("extra_api_hosts", &self.extra_api_hosts)
            .finish()
    }
}

impl FrontConfig {
    /// The lookback as a duration.
    pub fn lookback(&self) -> Duration {
        Duration::from_secs(self.lookback_secs)
    }

    /// Checks the values.
    ///
    /// # Errors
    /// `Config` for an unparsable or non-http(s) base URL, a page size out of range, or an
    /// unknown stream name.
    pub fn validate(&self) -> Result<()> {
        let url = url::Url::parse(&self.base_url).map_err(|e| {
            Error::config("Front base_url is not a URL")
                .with_context("connector", crate::NAME)
                .set_source(e)
        })?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(Error::config(
                "Front base_url must be an http(s) URL with a host",
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(Error::config("Front page_size must be between 1 and 100")
                .with_context("page_size", self.page_size));
        }
        if !(1..=MAX_EVENTS_PAGE_SIZE).contains(&self.events_page_size) {
            return Err(
                Error::config("Front events_page_size must be between 1 and 15")
                    .with_context("events_page_size", self.events_page_size),
            );
        }
        if self.nested_requests_per_read == 0 {
            return Err(Error::config(
                "Front nested_requests_per_read must be at least 1",
            ));
        }
        if !(1..=MAX_NESTED_CONCURRENCY).contains(&self.nested_concurrency) {
            return Err(
                Error::config("Front nested_concurrency must be between 1 and 64")
                    .with_context("nested_concurrency", self.nested_concurrency),
            );
        }
        if self.streams.is_empty() {
            return Err(Error::config("Front config names no streams"));
        }
        for s in &self.streams {
            if !streams::ALL.contains(&s.as_str()) {
                return Err(Error::config("unknown Front stream").with_context("stream", s));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::ErrorKind;

    #[test]
    fn defaults_validate_and_debug_hides_token() {
        let mut c = FrontConfig::default();
        assert!(c.validate().is_ok());
        c.api_token = Some(SecretString::from("tok-very-secret"));
        assert!(!format!("{c:?}").contains("tok-very-secret"));
        assert!(
            !serde_json::to_string(&c)
                .unwrap()
                .contains("tok-very-secret")
        );
        c.page_size = 101;
        assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::Config);
        let c = FrontConfig {
            base_url: "not a url".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::Config);
        let c = FrontConfig {
            nested_concurrency: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::Config);
        let c: FrontConfig = serde_json::from_str(r#"{"nested_concurrency": 3}"#).unwrap();
        assert_eq!((c.nested_concurrency, c.nested_requests_per_read), (3, 25));
        let c = FrontConfig {
            streams: vec!["deals".into()],
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::Config);
    }
}
