//! `HubSpotConfig`: everything a HubSpot connection needs, serde-friendly for host config files.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::models::PropertyMapping;
use crate::webhook::SignatureVersion;

/// The default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";
/// HubSpot's OAuth authorize URL.
pub const OAUTH_AUTHORIZE_URL: &str = "https://app.hubspot.com/oauth/authorize";
/// HubSpot's OAuth token URL (code exchange and refresh, client id/secret in the form body).
pub const OAUTH_TOKEN_URL: &str = "https://api.hubapi.com/oauth/v1/token";

/// The settings of one HubSpot connection.
///
/// `Debug` hides the private app token and the client secrets. Serialization includes them
/// (for host configuration files): keep such files private.
///
/// # Examples
/// ```
/// use apex_connect_hubspot::HubSpotConfig;
/// let mut config = HubSpotConfig::default();
/// config.private_app_token = Some("pat-na1-secret".to_string().into());
/// assert!(!format!("{config:?}").contains("pat-na1-secret"));
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HubSpotConfig {
    /// API base URL (default `https://api.hubapi.com`; the simulator's URL in tests).
    pub base_url: String,
    /// A private app's access token (static bearer). Absent when OAuth credentials are given
    /// to the builder instead.
    #[serde(with = "opt_secret")]
    pub private_app_token: Option<SecretString>,
    /// The app's client secret: the key of webhook signatures (v1, v2, v3).
    #[serde(with = "opt_secret")]
    pub client_secret: Option<SecretString>,
    /// Earlier client secrets still accepted on webhooks while a rotation is under way.
    #[serde(with = "vec_secret")]
    pub previous_client_secrets: Vec<SecretString>,
    /// The webhook target URL exactly as configured in HubSpot. v2 and v3 signatures cover
    /// the URL HubSpot called; when set, its scheme, host and path are used instead of the
    /// request's (which a proxy may have rewritten), with the request's own query string.
    pub webhook_target_url: Option<String>,
    /// Signature versions accepted on incoming webhooks (default v3, v2 and v1; v1 and v2
    /// carry no timestamp, so a captured delivery can be replayed: leave only `V3` to refuse
    /// them).
    pub webhook_versions: Vec<SignatureVersion>,
    /// This app's id (public app id or private app id): webhook events whose `sourceId` names
    /// it are the echo of our own writes and are dropped.
    pub app_id: Option<u64>,
    /// Page size of list endpoints (max 100).
    pub page_size: u32,
    /// Page size of the search API (max 200).
    pub search_page_size: u32,
    /// Overlap of each incremental sync with the previous one, in seconds, for search
    /// indexing lag (default 300).
    pub lookback_secs: u64,
    /// How many `(id, version)` pairs the cursor remembers to de-duplicate the overlap.
    pub dedupe_capacity: usize,
    /// The most requests per ten seconds for everything but search, whatever HubSpot
    /// reports. `None` (the default): the limit is learnt from `X-HubSpot-RateLimit-Max`
    /// (190 on Professional and Enterprise private apps, 250 with the capacity add-on),
    /// starting at 100 until the first answer. Set it to share one app's limit between
    /// several processes.
    pub requests_per_10s: Option<u32>,
    /// Search requests per second (HubSpot: 5 per token; search answers carry no headers).
    pub search_requests_per_second: u32,
    /// Longest `properties=` query string sent on list requests; past it, objects are listed
    /// by id and read through `batch/read` (a POST body has no URL length limit).
    pub max_properties_query_len: usize,
    /// Which property feeds which entity attribute.
    pub property_mapping: PropertyMapping,
}

impl Default for HubSpotConfig {
    fn default() -> Self {
        HubSpotConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            private_app_token: None,
            client_secret: None,
            previous_client_secrets: Vec::new(),
            webhook_target_url: None,
            webhook_versions: vec![
                SignatureVersion::V3,
                SignatureVersion::V2,
                SignatureVersion::V1,
            ],
            app_id: None,
            page_size: 100,
            search_page_size: 200,
            lookback_secs: 300,
            dedupe_capacity: 1000,
            requests_per_10s: None,
            search_requests_per_second: 5,
            max_properties_query_len: 6000,
            property_mapping: PropertyMapping::default(),
        }
    }
}

impl HubSpotConfig {
    /// Checks the values (what the builder and the platform descriptor refuse).
    ///
    /// # Errors
    /// `Config` naming the setting: a page size out of range (list 1-100, search 1-200), a
    /// zero rate, a webhook target URL that is not an absolute `http(s)` URL, or a
    /// lookback longer than 30 days.
    pub fn validate(&self) -> apex_connect_core::Result<()> {
        use apex_connect_core::Error;
        let bad =
            |setting: &str, msg: &'static str| Error::config(msg).with_context("setting", setting);
        if !(1..=100).contains(&self.page_size) {
            return Err(bad("page_size", "page_size must be between 1 and 100"));
        }
        if !(1..=200).contains(&self.search_page_size) {
            return Err(bad(
                "search_page_size",
                "search_page_size must be between 1 and 200",
            ));
        }
        if self.requests_per_10s == Some(0) {
            return Err(bad(
                "requests_per_10s",
                "requests_per_10s must be at least 1",
            ));
        }
        if self.search_requests_per_second == 0 {
            return Err(bad(
                "search_requests_per_second",
                "search_requests_per_second must be at least 1",
            ));
        }
        if self.lookback_secs > 30 * 86_400 {
            return Err(bad("lookback", "lookback must be at most 30 days"));
        }
        if let Some(u) = &self.webhook_target_url {
            match url::Url::parse(u) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
                _ => {
                    return Err(bad(
                        "webhook_target_url",
                        "webhook_target_url must be an absolute http(s) URL",
                    ));
                }
            }
        }
        if self.webhook_versions.is_empty() {
            return Err(bad(
                "webhook_versions",
                "webhook_versions must name at least one version",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for HubSpotConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |s: &Option<SecretString>| s.as_ref().map(|_| "[redacted]");
        f.debug_struct("HubSpotConfig")
            .field(
                "base_url",
                &apex_connect_core::error::redact_url(&self.base_url),
            )
            .field("private_app_token", &redacted(&self.private_app_token))
            .field("client_secret", &redacted(&self.client_secret))
            .field(
                "previous_client_secrets",
                &self.previous_client_secrets.len(),
            )
            .field(
                "webhook_target_url",
                &self
                    .webhook_target_url
                    .as_deref()
                    .map(apex_connect_core::error::redact_url),
            )
            .field("webhook_versions", &self.webhook_versions)
            .field("app_id", &self.app_id)
            .field("page_size", &self.page_size)
            .field("search_page_size", &self.search_page_size)
            .field("lookback_secs", &self.lookback_secs)
            .field("dedupe_capacity", &self.dedupe_capacity)
            .field("requests_per_10s", &self.requests_per_10s)
            .field(
                "search_requests_per_second",
                &self.search_requests_per_second,
            )
            .field("max_properties_query_len", &self.max_properties_query_len)
            .field("property_mapping", &self.property_mapping)
            .finish()
    }
}

mod opt_secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<SecretString>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(x) => s.serialize_some(x.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
    }
}

mod vec_secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(x.expose_secret())?;
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<SecretString>, D::Error> {
        Ok(Vec::<String>::deserialize(d)?
            .into_iter()
            .map(SecretString::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_roundtrip_and_debug_hides_secrets() {
        let json = serde_json::json!({
            "private_app_token": "pat-na1-very-secret",
            "client_secret": "cs-very-secret",
            "previous_client_secrets": ["old-very-secret"],
            "app_id": 42,
            "property_mapping": {"streams": {"contacts": {"apex_tier": "tier"}}}
        });
        let c: HubSpotConfig = serde_json::from_value(json).unwrap();
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.app_id, Some(42));
        assert_eq!(
            c.property_mapping.attribute("contacts", "apex_tier"),
            Some("tier")
        );
        let dbg = format!("{c:?} {c:#?}");
        for s in ["pat-na1-very-secret", "cs-very-secret", "old-very-secret"] {
            assert!(!dbg.contains(s), "{dbg}");
        }
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["private_app_token"], "pat-na1-very-secret");
    }
}
