//! The HubSpot platform descriptor, [`PLATFORM`]: what hosts (the server, the CLI) need to
//! configure, authenticate and build HubSpot connectors without naming HubSpot.
//!
//! | secret | kind | what for |
//! |---|---|---|
//! | `private_app_token` | credential | a private app's access token (static bearer); with it no OAuth is needed |
//! | `client_secret` | OAuth client | the app's client secret: OAuth token requests, and the key of webhook signatures (v1, v2, v3); webhooks are on when it is set |
//! | `previous_client_secret` | webhook | an earlier client secret still accepted on webhooks during a rotation |
//!
//! Settings ([`HubSpotSettings`], unknown keys refused): `app_id`, `webhook_target_url`,
//! `webhook_versions`, `page_size`, `search_page_size`, `lookback`, `dedupe_capacity`,
//! `requests_per_10s`, `search_requests_per_second`, `max_properties_query_len`,
//! `property_mapping`. The shared authentication settings (`auth`, `client_id`, `scopes`...,
//! see [`apex_connect_core::platform::AUTH_SETTINGS`]) are read by core.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::oauth::ClientAuth;
use apex_connect_core::platform::{
    AUTH_SETTINGS, BuildContext, ConnectionAuth, Grant, OAuthDefaults, Platform, SecretKind,
    SecretSpec, Settings,
};
use apex_connect_core::{Connector, Error, Result};
use serde::Deserialize;

use crate::NAME;
use crate::config::{HubSpotConfig, OAUTH_AUTHORIZE_URL, OAUTH_TOKEN_URL};
use crate::connector::HubSpotConnector;
use crate::webhook::SignatureVersion;

/// The HubSpot platform: `apex_connect_hubspot::PLATFORM`.
pub static PLATFORM: HubSpotPlatform = HubSpotPlatform;

/// The type of [`PLATFORM`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HubSpotPlatform;

/// The secrets a HubSpot connection reads.
pub const SECRETS: &[SecretSpec] = &[
    SecretSpec::new(
        "private_app_token",
        SecretKind::Credential,
        "a private app's access token (static bearer; no OAuth needed with it)",
    ),
    SecretSpec::new(
        "client_secret",
        SecretKind::OAuthClient,
        "the app's client secret: OAuth token requests and webhook signatures (v1, v2, v3)",
    ),
    SecretSpec::new(
        "previous_client_secret",
        SecretKind::Webhook,
        "an earlier client secret still accepted on webhooks during a rotation",
    ),
];

/// The scopes asked for by default: read (and write back) contacts, companies and deals,
/// read owners, and read email engagements (`sales-email-read`). Notes, calls, meetings and
/// tasks need the contacts scopes.
pub const DEFAULT_SCOPES: &[&str] = &[
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.companies.read",
    "crm.objects.companies.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.objects.owners.read",
    "sales-email-read",
];

/// The settings of one HubSpot connection (its settings table, less the shared
/// authentication keys). Every key is optional; an unknown key is an error.
///
/// # Examples
/// ```
/// use apex_connect_core::platform::Settings;
/// use apex_connect_hubspot::descriptor::HubSpotSettings;
///
/// let settings = Settings::from_value(serde_json::json!({
///     "client_id": "abc", "app_id": 1160452, "lookback": "10m", "requests_per_10s": 95,
///     "property_mapping": {"contacts": {"apex_tier": "tier"}}
/// })).unwrap();
/// let config = HubSpotSettings::from_settings(&settings).unwrap().to_config().unwrap();
/// assert_eq!(config.lookback_secs, 600);
/// assert_eq!(config.requests_per_10s, Some(95));
/// assert_eq!(config.property_mapping.attribute("contacts", "apex_tier"), Some("tier"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HubSpotSettings {
    /// This app's id: webhook events whose `sourceId` names it (the echo of our own writes)
    /// are dropped.
    pub app_id: Option<u64>,
    /// The webhook target URL exactly as configured in HubSpot (v2 and v3 sign it).
    pub webhook_target_url: Option<String>,
    /// Signature versions accepted (`["v3"]` refuses the unstamped v1 and v2; default all).
    pub webhook_versions: Option<Vec<SignatureVersion>>,
    /// List page size, 1 to 100 (default 100).
    pub page_size: Option<u32>,
    /// Search page size, 1 to 200 (default 200).
    pub search_page_size: Option<u32>,
    /// The overlap re-read by each incremental sync, for search indexing lag (`"5m"`,
    /// default 5 minutes, at most 30 days).
    pub lookback: Option<String>,
    /// How many `(id, version)` pairs a cursor remembers to skip the overlap (default 1000).
    pub dedupe_capacity: Option<usize>,
    /// The most requests per ten seconds (but search), whatever HubSpot reports; default:
    /// learnt from `X-HubSpot-RateLimit-Max`.
    pub requests_per_10s: Option<u32>,
    /// Search requests per second (default 5, HubSpot's limit per token).
    pub search_requests_per_second: Option<u32>,
    /// Longest `properties=` query sent on list requests (default 6000); past it, objects
    /// are read with `batch/read`.
    pub max_properties_query_len: Option<usize>,
    /// Stream -> HubSpot property -> entity attribute, added to the defaults.
    pub property_mapping: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl HubSpotSettings {
    /// Reads a connection's settings.
    ///
    /// # Errors
    /// `Config` naming an unknown key or a value of the wrong type.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        settings.parse::<HubSpotSettings>().map_err(|e| {
            // Name the setting: the first one that does not read on its own.
            let bad = settings
                .as_map()
                .iter()
                .filter(|(k, _)| !AUTH_SETTINGS.contains(&k.as_str()))
                .find(|(k, v)| {
                    let mut one = serde_json::Map::new();
                    one.insert((*k).clone(), (*v).clone());
                    serde_json::from_value::<HubSpotSettings>(serde_json::Value::Object(one))
                        .is_err()
                })
                .map(|(k, _)| k.clone());
            let e = e.with_context("platform", NAME);
            match bad {
                Some(k) => e.with_context("setting", k),
                None => e,
            }
        })
    }

    /// The connector configuration these settings make (no credentials), validated.
    ///
    /// # Errors
    /// `Config` naming the setting: a lookback that is not a duration, or any value
    /// [`HubSpotConfig::validate`] refuses.
    pub fn to_config(&self) -> Result<HubSpotConfig> {
        let mut c = HubSpotConfig {
            app_id: self.app_id,
            webhook_target_url: self.webhook_target_url.clone(),
            requests_per_10s: self.requests_per_10s,
            ..HubSpotConfig::default()
        };
        if let Some(v) = &self.webhook_versions {
            c.webhook_versions = v.clone();
        }
        if let Some(n) = self.page_size {
            c.page_size = n;
        }
        if let Some(n) = self.search_page_size {
            c.search_page_size = n;
        }
        if let Some(text) = &self.lookback {
            let d: Duration = humantime::parse_duration(text).map_err(|e| {
                Error::config("setting is not a duration such as \"5m\" or \"300s\"")
                    .with_context("setting", "lookback")
                    .with_context("value", text)
                    .set_source(e)
            })?;
            c.lookback_secs = d.as_secs();
        }
        if let Some(n) = self.dedupe_capacity {
            c.dedupe_capacity = n;
        }
        if let Some(n) = self.search_requests_per_second {
            c.search_requests_per_second = n;
        }
        if let Some(n) = self.max_properties_query_len {
            c.max_properties_query_len = n;
        }
        if let Some(m) = &self.property_mapping {
            for (stream, props) in m {
                if !crate::streams::ALL.contains(&stream.as_str()) {
                    return Err(Error::config("property_mapping names an unknown stream")
                        .with_context("setting", "property_mapping")
                        .with_context("stream", stream));
                }
                for (property, attribute) in props {
                    c.property_mapping = c.property_mapping.set(stream, property, attribute);
                }
            }
        }
        c.validate().map_err(|e| e.with_context("platform", NAME))?;
        Ok(c)
    }
}

impl Platform for HubSpotPlatform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "HubSpot CRM: contacts, companies, deals, engagements, owners, associations; webhooks; write-back"
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    /// HubSpot's authorize and token endpoints (v1 token endpoint), client credentials in
    /// the form body, authorization code and refresh grants, [`DEFAULT_SCOPES`].
    fn oauth(&self, _settings: &Settings) -> Result<Option<OAuthDefaults>> {
        Ok(Some(
            OAuthDefaults::new(OAUTH_TOKEN_URL)
                .auth_url(OAUTH_AUTHORIZE_URL)
                .client_auth(ClientAuth::RequestBody)
                .grants([Grant::AuthorizationCode, Grant::RefreshToken])
                .scopes(DEFAULT_SCOPES.iter().copied()),
        ))
    }

    fn check_settings(&self, settings: &Settings) -> Result<()> {
        HubSpotSettings::from_settings(settings)?.to_config()?;
        Ok(())
    }

    /// Authenticates with the OAuth manager core resolved, or with the `private_app_token`
    /// secret; `client_secret` (and `previous_client_secret`) turn webhooks on.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let mut config = HubSpotSettings::from_settings(ctx.settings)?.to_config()?;
        if let Some(url) = ctx.base_url {
            config.base_url = url.to_string();
        }
        let mut b = HubSpotConnector::builder().config(config);
        b = match &ctx.auth {
            ConnectionAuth::OAuth(manager) => b.token_manager(manager.clone()),
            ConnectionAuth::Secrets => {
                let token = ctx.secrets.require("private_app_token").map_err(|e| {
                    e.with_context("platform", NAME).with_context(
                        "purpose",
                        "a private app's access token (or set up OAuth with `client_id`)",
                    )
                })?;
                b.private_app_token(token.clone())
            }
            other => {
                return Err(Error::config("HubSpot cannot use this authentication")
                    .with_context("auth", format!("{other:?}")));
            }
        };
        if let Some(s) = ctx.secrets.get("client_secret") {
            b = b.client_secret(s.clone());
        }
        if let Some(s) = ctx.secrets.get("previous_client_secret") {
            b = b.previous_client_secret(s.clone());
        }
        if !ctx.streams.is_empty() {
            b = b.streams(ctx.streams.iter().cloned());
        }
        let connector = b
            .build()
            .map_err(|e| e.with_context("connection", ctx.connection))?;
        Ok(Arc::new(connector))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::oauth::{OAuthClient, OAuthConfig, TokenManager};
    use apex_connect_core::platform::Secrets;
    use apex_connect_core::{ConnectionId, ConnectorExt, ErrorKind, MemoryTokenStore};

    fn settings(v: serde_json::Value) -> Settings {
        Settings::from_value(v).unwrap()
    }

    fn config_err(v: serde_json::Value) -> Error {
        let e = PLATFORM.check_settings(&settings(v)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        e
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let e = config_err(serde_json::json!({"page_sise": 10}));
        assert_eq!(e.context_value("setting"), Some("page_sise"));
        let e = config_err(serde_json::json!({"page_size": 101}));
        assert_eq!(e.context_value("setting"), Some("page_size"));
        let e = config_err(serde_json::json!({"page_size": 0}));
        assert_eq!(e.context_value("setting"), Some("page_size"));
        let e = config_err(serde_json::json!({"search_page_size": 500}));
        assert_eq!(e.context_value("setting"), Some("search_page_size"));
        let e = config_err(serde_json::json!({"page_size": "ten", "app_id": 1}));
        assert_eq!(e.context_value("setting"), Some("page_size"));
        let e = config_err(serde_json::json!({"lookback": "a while"}));
        assert_eq!(e.context_value("setting"), Some("lookback"));
        let e = config_err(serde_json::json!({"lookback": "400d"}));
        assert_eq!(e.context_value("setting"), Some("lookback"));
        let e = config_err(serde_json::json!({"requests_per_10s": 0}));
        assert_eq!(e.context_value("setting"), Some("requests_per_10s"));
        let e = config_err(serde_json::json!({"requests_per_10s": -5}));
        assert_eq!(e.context_value("setting"), Some("requests_per_10s"));
        let e = config_err(serde_json::json!({"webhook_target_url": "/hooks/hubspot"}));
        assert_eq!(e.context_value("setting"), Some("webhook_target_url"));
        let e = config_err(serde_json::json!({"webhook_versions": ["v4"]}));
        assert_eq!(e.context_value("setting"), Some("webhook_versions"));
        let e = config_err(serde_json::json!({"webhook_versions": []}));
        assert_eq!(e.context_value("setting"), Some("webhook_versions"));
        let e = config_err(serde_json::json!({"property_mapping": {"tickets": {"a": "b"}}}));
        assert_eq!(e.context_value("stream"), Some("tickets"));
        let e = config_err(serde_json::json!({"app_id": "twelve"}));
        assert_eq!(e.context_value("setting"), Some("app_id"));
        // The shared authentication keys are not HubSpot's to refuse.
        PLATFORM
            .check_settings(&settings(serde_json::json!({
                "client_id": "abc", "scopes": ["crm.objects.contacts.read"], "auth": "oauth",
                "app_id": 7, "webhook_target_url": "https://hooks.example.com/hubspot?x=1",
                "webhook_versions": ["v3"], "page_size": 50, "search_page_size": 200,
                "lookback": "2m", "requests_per_10s": 190, "search_requests_per_second": 4,
                "dedupe_capacity": 10, "max_properties_query_len": 100
            })))
            .unwrap();
        PLATFORM.check_settings(&Settings::default()).unwrap();
    }

    #[test]
    fn descriptor_names_secrets_and_oauth_defaults() {
        assert_eq!(PLATFORM.name(), "hubspot");
        let kinds: Vec<(&str, SecretKind)> = PLATFORM
            .secrets()
            .iter()
            .map(|s| (s.name, s.kind))
            .collect();
        assert!(kinds.contains(&("private_app_token", SecretKind::Credential)));
        assert!(kinds.contains(&("client_secret", SecretKind::OAuthClient)));
        let o = PLATFORM.oauth(&Settings::default()).unwrap().unwrap();
        assert_eq!(o.token_url, "https://api.hubapi.com/oauth/v1/token");
        assert_eq!(
            o.auth_url.as_deref(),
            Some("https://app.hubspot.com/oauth/authorize")
        );
        assert_eq!(o.client_auth, ClientAuth::RequestBody);
        assert!(o.supports(Grant::AuthorizationCode) && o.supports(Grant::RefreshToken));
        assert!(!o.supports(Grant::JwtBearer));
        assert!(o.scopes.iter().any(|s| s == "crm.objects.contacts.read"));
    }

    #[test]
    fn build_uses_the_secrets_or_the_token_manager() {
        let conn = ConnectionId::from("acme-hubspot");
        let s = settings(serde_json::json!({"app_id": 42, "requests_per_10s": 150}));
        let none = Secrets::new();
        let ctx = BuildContext::new(&conn, &s, &none, ConnectionAuth::Secrets);
        let e = PLATFORM.build(&ctx).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.context_value("secret"), Some("private_app_token"));

        let secrets = Secrets::from_values([
            ("private_app_token", "pat-na1-secret-token"),
            ("client_secret", "cs-secret"),
        ]);
        let streams = vec!["contacts".to_string(), "owners".to_string()];
        let ctx = BuildContext::new(&conn, &s, &secrets, ConnectionAuth::Secrets)
            .with_base_url(Some("http://127.0.0.1:9"))
            .with_streams(&streams);
        let c = PLATFORM.build(&ctx).unwrap();
        assert_eq!(c.info().name, "hubspot");
        assert!(c.takes_webhooks(), "client_secret turns webhooks on");
        let names: Vec<&str> = c
            .info()
            .capabilities
            .streams
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(names, ["contacts", "owners"]);
        assert!(!c.info().capabilities.oauth_refresh);
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("pat-na1-secret-token") && !dbg.contains("cs-secret"),
            "{dbg}"
        );

        let bad_streams = vec!["tickets".to_string()];
        let ctx = BuildContext::new(&conn, &s, &secrets, ConnectionAuth::Secrets)
            .with_streams(&bad_streams);
        assert_eq!(PLATFORM.build(&ctx).unwrap_err().kind(), ErrorKind::Config);

        // OAuth: the manager core resolved authenticates; no private app token needed.
        let client = OAuthClient::new(
            OAuthConfig::new("id", "http://127.0.0.1:9/oauth/v1/token"),
            reqwest::Client::new(),
        )
        .unwrap();
        let manager = TokenManager::builder(
            conn.clone(),
            Arc::new(MemoryTokenStore::new()),
            Arc::new(client),
        )
        .build();
        let ctx = BuildContext::new(&conn, &s, &none, ConnectionAuth::OAuth(Arc::new(manager)));
        let c = PLATFORM.build(&ctx).unwrap();
        assert!(c.info().capabilities.oauth_refresh);
        assert!(!c.takes_webhooks(), "no client secret, no webhooks");
    }
}
