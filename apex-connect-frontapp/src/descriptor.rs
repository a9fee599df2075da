//! [`PLATFORM`]: Front as an `apex_connect_core::Platform` plug-in (name, settings, secrets,
//! OAuth defaults, and the factory hosts build connections with).
//!
//! Hosts (the server, the CLI, the facade) never name Front: they find this descriptor in the
//! list of compiled-in platforms and call [`Platform::check_settings`] when they load a
//! configuration and [`Platform::build`] for each connection.

use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::http::RateGate;
use apex_connect_core::oauth::ClientAuth;
use apex_connect_core::platform::{
    BuildContext, ConnectionAuth, Grant, OAuthDefaults, Platform, SecretKind, SecretSpec, Settings,
};
use apex_connect_core::{Connector, Error, Result};
use serde::Deserialize;

use crate::NAME;
use crate::config::FrontConfig;
use crate::connector::{FrontConnector, OAUTH_AUTHORIZE_URL, OAUTH_TOKEN_URL};

/// Front's descriptor. See the crate README for its settings and secrets.
///
/// # Examples
/// ```
/// use apex_connect_core::platform::{BuildContext, ConnectionAuth, Platform, Secrets, Settings};
/// use apex_connect_core::ConnectionId;
///
/// let settings = Settings::from_value(serde_json::json!({"page_size": 50, "lookback": "2m"})).unwrap();
/// apex_connect_frontapp::PLATFORM.check_settings(&settings).unwrap();
/// let secrets = Secrets::from_values([("api_token", "front-api-token")]);
/// let connection = ConnectionId::from("acme-front");
/// let ctx = BuildContext::new(&connection, &settings, &secrets, ConnectionAuth::Secrets);
/// let front = apex_connect_frontapp::PLATFORM.build(&ctx).unwrap();
/// assert_eq!(front.info().name, "frontapp");
/// ```
pub static PLATFORM: FrontPlatform = FrontPlatform;

/// The type of [`PLATFORM`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FrontPlatform;

/// The secrets Front connections read.
static SECRETS: [SecretSpec; 4] = [
    SecretSpec::new(
        "api_token",
        SecretKind::Credential,
        "a Front API token (Settings > Developers > API tokens); not needed with OAuth",
    ),
    SecretSpec::new(
        "client_secret",
        SecretKind::OAuthClient,
        "the OAuth app's client secret (sent with HTTP Basic auth to app.frontapp.com/oauth/token)",
    ),
    SecretSpec::new(
        "webhook_secret",
        SecretKind::Webhook,
        "the app secret signing application webhooks (enables webhooks)",
    ),
    SecretSpec::new(
        "rule_webhook_secret",
        SecretKind::Webhook,
        "the API secret signing legacy rule webhooks (used when no webhook_secret is set)",
    ),
];

/// A Front connection's own settings (the shared authentication settings, such as
/// `client_id`, are core's: see `apex_connect_core::platform::AUTH_SETTINGS`). Every field
/// is optional; an unknown setting is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FrontSettings {
    /// `limit` on list endpoints, 1..=100 (default 100).
    pub page_size: Option<u32>,
    /// `limit` on `/events`, 1..=15 (default 15).
    pub events_page_size: Option<u32>,
    /// How far back each incremental walk re-reads, as a duration such as `"60s"` or `"5m"`
    /// (default 60 s).
    pub lookback: Option<String>,
    /// How many conversations' messages (or comments) a nested read fetches at once,
    /// 1..=64 (default 8).
    pub nested_concurrency: Option<u32>,
    /// At most this many requests per read of a nested stream, at least 1 (default 25).
    pub nested_requests_per_read: Option<u32>,
    /// Where the `events` stream starts, Unix milliseconds (default: the beginning of the
    /// feed).
    pub events_since_ms: Option<i64>,
    /// More hosts whose `next` links may be followed (exact or `*.suffix`), for proxies.
    #[serde(default)]
    pub extra_api_hosts: Vec<String>,
    /// A local quota in requests per minute (Front's limit is per company: 50, 100 or 200
    /// depending on the plan, 120 for OAuth apps). Default: none; the rate gate follows
    /// Front's `x-ratelimit-*` headers and 429s.
    pub requests_per_minute: Option<u32>,
}

impl FrontSettings {
    /// The settings of `settings` (the connection's table).
    ///
    /// # Errors
    /// `Config` naming the setting: unknown, of the wrong type, or out of range.
    pub fn from_settings(settings: &Settings) -> Result<FrontSettings> {
        let s: FrontSettings = settings
            .parse()
            .map_err(|e| e.with_context("platform", NAME))?;
        s.to_config()?;
        s.rate_gate()?;
        Ok(s)
    }

    /// The lookback as a duration.
    ///
    /// # Errors
    /// `Config` for a value that is not a duration.
    pub fn lookback(&self) -> Result<Option<Duration>> {
        self.lookback
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| {
                    Error::config("Front setting `lookback` is not a duration such as \"60s\"")
                        .with_context("setting", "lookback")
                        .with_context("value", text)
                        .set_source(e)
                })
            })
            .transpose()
    }

    /// The connector configuration these settings give (defaults for what they leave out),
    /// validated.
    ///
    /// # Errors
    /// `Config` naming the setting that is out of range.
    pub fn to_config(&self) -> Result<FrontConfig> {
        let mut c = FrontConfig::default();
        if let Some(n) = self.page_size {
            c.page_size = n;
        }
        if let Some(n) = self.events_page_size {
            c.events_page_size = n;
        }
        if let Some(d) = self.lookback()? {
            c.lookback_secs = d.as_secs();
        }
        if let Some(n) = self.nested_concurrency {
            c.nested_concurrency = n;
        }
        if let Some(n) = self.nested_requests_per_read {
            c.nested_requests_per_read = n;
        }
        c.events_since_ms = self.events_since_ms;
        c.extra_api_hosts = self.extra_api_hosts.clone();
        c.validate().map_err(|e| e.with_context("platform", NAME))?;
        Ok(c)
    }

    /// The local rate gate, when `requests_per_minute` is set.
    ///
    /// # Errors
    /// `Config` for `requests_per_minute = 0`.
    pub fn rate_gate(&self) -> Result<Option<RateGate>> {
        self.requests_per_minute
            .map(|n| {
                RateGate::per_minute(n).map_err(|e| {
                    e.with_context("platform", NAME)
                        .with_context("setting", "requests_per_minute")
                })
            })
            .transpose()
    }
}

impl Platform for FrontPlatform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Front (Core API): conversations, messages, comments, contacts, tags, teammates, inboxes, events; webhooks; write-back"
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        &SECRETS
    }

    /// Authorize at `app.frontapp.com/oauth/authorize` (no scopes: Front grants "shared
    /// resources"), token and refresh at `app.frontapp.com/oauth/token` with HTTP Basic
    /// client authentication; authorization code and refresh token grants.
    fn oauth(&self, _settings: &Settings) -> Result<Option<OAuthDefaults>> {
        Ok(Some(
            OAuthDefaults::new(OAUTH_TOKEN_URL)
                .auth_url(OAUTH_AUTHORIZE_URL)
                .client_auth(ClientAuth::Basic)
                .grants([Grant::AuthorizationCode, Grant::RefreshToken]),
        ))
    }

    fn check_settings(&self, settings: &Settings) -> Result<()> {
        FrontSettings::from_settings(settings).map(|_| ())
    }

    /// Builds the connector: [`FrontSettings`] from the connection's settings, the base URL
    /// and streams of the context, the API token (`api_token`) or the OAuth token manager as
    /// credentials, and the webhook secrets when set.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let settings = FrontSettings::from_settings(ctx.settings)?;
        let mut config = settings.to_config()?;
        if let Some(url) = ctx.base_url {
            config.base_url = url.to_string();
        }
        if !ctx.streams.is_empty() {
            config.streams = ctx.streams.to_vec();
        }
        let mut b = FrontConnector::builder().config(config);
        b = match &ctx.auth {
            ConnectionAuth::Secrets => {
                let token = ctx.secrets.require("api_token").map_err(|e| {
                    e.with_context("platform", NAME)
                        .with_context("connection", ctx.connection)
                        .with_context("purpose", SECRETS[0].purpose)
                })?;
                b.api_token(token.clone())
            }
            ConnectionAuth::OAuth(manager) => b.oauth(manager.clone()),
            other => {
                return Err(Error::config("Front does not support this authentication")
                    .with_context("auth", format!("{other:?}"))
                    .with_context("connection", ctx.connection));
            }
        };
        if let Some(gate) = settings.rate_gate()? {
            b = b.rate_gate(gate);
        }
        if let Some(s) = ctx.secrets.get("webhook_secret") {
            b = b.webhook_secret(s.clone());
        }
        if let Some(s) = ctx.secrets.get("rule_webhook_secret") {
            b = b.rule_webhook_secret(s.clone());
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
    use apex_connect_core::{ConnectionId, ErrorKind, MemoryTokenStore, TokenStore};
    use serde_json::json;

    fn settings(v: serde_json::Value) -> Settings {
        Settings::from_value(v).unwrap()
    }

    fn build(s: &Settings, secrets: &Secrets) -> Result<Arc<dyn Connector>> {
        let connection = ConnectionId::from("acme-front");
        PLATFORM.build(
            &BuildContext::new(&connection, s, secrets, ConnectionAuth::Secrets)
                .with_base_url(Some("http://127.0.0.1:9")),
        )
    }

    #[test]
    fn names_secrets_and_oauth_defaults() {
        assert_eq!(PLATFORM.name(), "frontapp");
        let names: Vec<&str> = PLATFORM.secrets().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "api_token",
                "client_secret",
                "webhook_secret",
                "rule_webhook_secret"
            ]
        );
        let kinds: Vec<SecretKind> = PLATFORM.secrets().iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                SecretKind::Credential,
                SecretKind::OAuthClient,
                SecretKind::Webhook,
                SecretKind::Webhook
            ]
        );
        let o = PLATFORM.oauth(&Settings::default()).unwrap().unwrap();
        assert_eq!(o.token_url, "https://app.frontapp.com/oauth/token");
        assert_eq!(
            o.auth_url.as_deref(),
            Some("https://app.frontapp.com/oauth/authorize")
        );
        assert_eq!(o.client_auth, ClientAuth::Basic);
        assert!(o.supports(Grant::AuthorizationCode) && o.supports(Grant::RefreshToken));
        assert!(!o.supports(Grant::ClientCredentials));
        assert!(o.scopes.is_empty());
    }

    #[test]
    fn settings_are_typed_and_checked() {
        let all = settings(json!({
            "page_size": 50, "events_page_size": 10, "lookback": "2m",
            "nested_concurrency": 4, "nested_requests_per_read": 9,
            "events_since_ms": 1_700_000_000_000_i64, "extra_api_hosts": ["proxy.internal"],
            "requests_per_minute": 100,
            // Shared authentication settings are core's, not Front's: allowed.
            "client_id": "front-app", "refresh_skew": "30s",
        }));
        PLATFORM.check_settings(&all).unwrap();
        let s = FrontSettings::from_settings(&all).unwrap();
        let c = s.to_config().unwrap();
        assert_eq!(
            (
                c.page_size,
                c.events_page_size,
                c.lookback_secs,
                c.nested_concurrency,
                c.nested_requests_per_read
            ),
            (50, 10, 120, 4, 9)
        );
        assert_eq!(c.events_since_ms, Some(1_700_000_000_000));
        assert!(s.rate_gate().unwrap().is_some());
        PLATFORM.check_settings(&Settings::default()).unwrap();

        let problem = |v: serde_json::Value| {
            let e = PLATFORM.check_settings(&settings(v)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            format!("{e} {e:?}")
        };
        // Unknown setting (a typo).
        assert!(problem(json!({"page_sise": 50})).contains("page_sise"));
        // Wrong type.
        let text = problem(json!({"page_size": "fifty"}));
        assert!(text.contains("invalid type"), "{text}");
        assert!(problem(json!({"nested_concurrency": -1})).contains("invalid value"));
        // Out of range.
        assert!(problem(json!({"page_size": 500})).contains("page_size"));
        assert!(problem(json!({"events_page_size": 16})).contains("events_page_size"));
        assert!(problem(json!({"nested_concurrency": 65})).contains("nested_concurrency"));
        assert!(problem(json!({"lookback": "soon"})).contains("lookback"));
        assert!(problem(json!({"requests_per_minute": 0})).contains("requests_per_minute"));
    }

    #[test]
    fn build_with_an_api_token_and_webhook_secrets() {
        let s = settings(json!({"page_size": 25}));
        let secrets = Secrets::from_values([
            ("api_token", "front-token-123456"),
            ("webhook_secret", "app-secret-abcdef"),
        ]);
        let c = build(&s, &secrets).unwrap();
        assert_eq!(c.info().name, "frontapp");
        assert!(c.webhooks().is_some(), "a webhook secret enables webhooks");
        assert!(!c.info().capabilities.oauth_refresh);
        let text = format!("{c:?}");
        assert!(text.contains("page_size: 25"), "{text}");
        assert!(!text.contains("front-token-123456") && !text.contains("app-secret-abcdef"));

        let rule = Secrets::from_values([("api_token", "t"), ("rule_webhook_secret", "r")]);
        assert!(build(&s, &rule).unwrap().webhooks().is_some());
        let none = Secrets::from_values([("api_token", "t")]);
        assert!(build(&s, &none).unwrap().webhooks().is_none());
    }

    #[test]
    fn build_refuses_a_missing_secret_and_bad_settings() {
        let e = build(&Settings::default(), &Secrets::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert_eq!(e.context_value("secret"), Some("api_token"));
        assert_eq!(e.context_value("connection"), Some("acme-front"));
        let env = Secrets::from_lookup([("api_token", "FRONT_TOKEN_FOR_TEST")], |_| None);
        let e = build(&Settings::default(), &env).unwrap_err();
        assert_eq!(e.context_value("variable"), Some("FRONT_TOKEN_FOR_TEST"));
        let secrets = Secrets::from_values([("api_token", "t")]);
        let e = build(&settings(json!({"page_size": true})), &secrets).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        let e = build(&settings(json!({"lookbak": "1m"})), &secrets).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[test]
    fn build_with_oauth_uses_the_token_manager() {
        let client = OAuthClient::new(
            OAuthConfig::new("front-app", OAUTH_TOKEN_URL).with_client_auth(ClientAuth::Basic),
            reqwest::Client::new(),
        )
        .unwrap();
        let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
        let connection = ConnectionId::from("acme-front");
        let manager = TokenManager::builder(connection.clone(), store, Arc::new(client)).build();
        let s = Settings::default();
        let secrets = Secrets::new();
        let ctx = BuildContext::new(
            &connection,
            &s,
            &secrets,
            ConnectionAuth::OAuth(Arc::new(manager)),
        )
        .with_streams(&[]);
        let c = PLATFORM.build(&ctx).unwrap();
        assert!(c.info().capabilities.oauth_refresh, "no api_token needed");
        let streams = ["messages".to_string(), "contacts".to_string()];
        let ctx =
            BuildContext::new(&connection, &s, &secrets, ctx.auth.clone()).with_streams(&streams);
        let c = PLATFORM.build(&ctx).unwrap();
        let names: Vec<&str> = c
            .info()
            .capabilities
            .streams
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(names, ["messages", "contacts"]);
    }
}
