//! The connector registry: platform name -> factory building an `Arc<dyn Connector>` from a
//! connection's configuration and its secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use apex_connect_core::oauth::{ClientAuth, OAuthClient, OAuthConfig, TokenManager};
use apex_connect_core::store::{ConnectionStatus, StateStore};
use apex_connect_core::{ConnectionId, Connector, Error, Result, TokenStore};
use secrecy::{ExposeSecret, SecretString};

use crate::config::ConnectionConfig;

/// The secrets of one connection, read from the environment variables its `env` table names.
/// `Debug` shows only the secret names.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretString>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// Reads the variables named in `connection.env`; an unset variable is simply absent
    /// (the factory decides whether it needs it).
    pub fn from_env(connection: &ConnectionConfig) -> Self {
        Self::from_lookup(connection, |var| std::env::var(var).ok())
    }

    /// Like [`Secrets::from_env`] with another lookup (tests).
    pub fn from_lookup(
        connection: &ConnectionConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let values = connection
            .env
            .iter()
            .filter_map(|(name, var)| lookup(var).map(|v| (name.clone(), SecretString::from(v))))
            .collect();
        Secrets { values }
    }

    /// Secrets from explicit values (tests, hosts).
    pub fn from_values<I, K, V>(values: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Secrets {
            values: values
                .into_iter()
                .map(|(k, v)| (k.into(), SecretString::from(v.into())))
                .collect(),
        }
    }

    /// The secret `name`, if set.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.values.get(name)
    }

    /// The secret `name`.
    ///
    /// # Errors
    /// `Config` naming the secret and the variable that should hold it.
    pub fn require(&self, name: &str, connection: &ConnectionConfig) -> Result<&SecretString> {
        self.values.get(name).ok_or_else(|| {
            let var = connection
                .env
                .get(name)
                .map(String::as_str)
                .unwrap_or("(not named in `env`)");
            Error::config("a secret the connector needs is not set")
                .with_context("connection", &connection.id)
                .with_context("secret", name)
                .with_context("variable", var)
        })
    }
}

/// What a factory gets to build a connector.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FactoryContext<'a> {
    /// The connection's configuration.
    pub connection: &'a ConnectionConfig,
    /// Its secrets.
    pub secrets: &'a Secrets,
    /// The state store (encrypted OAuth tokens live there).
    pub store: &'a Arc<dyn StateStore>,
    /// Whether the store holds OAuth tokens for the connection (saved by `apex-connect
    /// connect`); [`App::open`](crate::App::open) looks. With OAuth settings and stored tokens
    /// the built-in factories authenticate with a [`TokenManager`] instead of a static token.
    pub oauth_tokens: bool,
}

impl<'a> FactoryContext<'a> {
    /// A context from its parts.
    pub fn new(
        connection: &'a ConnectionConfig,
        secrets: &'a Secrets,
        store: &'a Arc<dyn StateStore>,
    ) -> Self {
        FactoryContext {
            connection,
            secrets,
            store,
            oauth_tokens: false,
        }
    }

    /// Says whether the store holds OAuth tokens for the connection.
    pub fn with_oauth_tokens(mut self, stored: bool) -> Self {
        self.oauth_tokens = stored;
        self
    }

    /// Whether the connector should authenticate with OAuth: the connection has OAuth
    /// settings, and either the store holds its tokens or no static token (`static_secret`)
    /// is set (the connector then fails at first use with "connect it first").
    pub fn use_oauth(&self, static_secret: &str) -> bool {
        has_oauth(self.connection)
            && (self.oauth_tokens || self.secrets.get(static_secret).is_none())
    }

    /// A [`TokenManager`] for the connection, from its OAuth settings (see [`oauth_config`]):
    /// it loads the tokens from the store, refreshes them [`refresh_skew`](oauth_config)
    /// ahead of expiry (default 60 s), saves rotated tokens through the store's
    /// compare-and-swap (one refresh across processes sharing the database), and when the
    /// grant is gone marks the connection `NeedsReauth` in the store (see
    /// [`mark_needs_reauth`]).
    ///
    /// # Errors
    /// `Config` when the connection has no or invalid OAuth settings.
    pub fn token_manager(&self) -> Result<TokenManager> {
        let c = self.connection;
        let config = oauth_config(c, self.secrets)?.ok_or_else(|| {
            Error::config("the connection has no OAuth settings (`client_id`, `token_url`)")
                .with_context("connection", &c.id)
        })?;
        let client = OAuthClient::with_default_http(config)?;
        let store: Arc<dyn StateStore> = self.store.clone();
        let tokens: Arc<dyn TokenStore> = store.clone();
        let platform = c.platform.clone();
        let mut b =
            TokenManager::builder(ConnectionId::from(c.id.clone()), tokens, Arc::new(client))
                .on_reauth_needed(move |id| {
                    let (store, id, platform) = (store.clone(), id.clone(), platform.clone());
                    // The hook is synchronous; the status write runs beside the failing request.
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            if let Err(e) = mark_needs_reauth(store.as_ref(), &id, &platform).await
                            {
                                tracing::warn!(connection = %id, error = %e,
                            "cannot mark the connection as needing re-authorization");
                            }
                        });
                    }
                });
        if let Some(skew) = c.settings.get("refresh_skew") {
            let text = skew.as_str().ok_or_else(|| {
                Error::config("`refresh_skew` is a duration such as \"60s\"")
                    .with_context("connection", &c.id)
            })?;
            b = b.skew(crate::config::parse_duration(text)?);
        }
        Ok(b.build())
    }
}

/// Whether a connection has OAuth settings (a `client_id` setting).
pub fn has_oauth(connection: &ConnectionConfig) -> bool {
    connection.settings.contains_key("client_id")
}

/// The OAuth configuration of a connection, `None` without a `client_id` setting.
///
/// Settings: `client_id`; `token_url` and `auth_url` (default: the platform's endpoints for
/// `frontapp` and `hubspot`; `auth_url` is needed only by `apex-connect connect`); `scopes`
/// (array of strings); `client_auth` (`"basic"` or `"request_body"`; default `request_body`
/// for `hubspot`, `basic` otherwise). Secret: `client_secret` (absent for public clients).
/// The redirect URL is not set (the `connect` command adds its callback).
///
/// # Errors
/// `Config` for a setting of the wrong type or a missing `token_url`.
pub fn oauth_config(
    connection: &ConnectionConfig,
    secrets: &Secrets,
) -> Result<Option<OAuthConfig>> {
    let settings = &connection.settings;
    let text = |key: &str| -> Result<Option<String>> {
        match settings.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                Error::config("OAuth setting must be a string")
                    .with_context("connection", &connection.id)
                    .with_context("setting", key)
            }),
        }
    };
    let Some(client_id) = text("client_id")? else {
        return Ok(None);
    };
    let (default_auth, default_token, default_client_auth) = platform_oauth_defaults(connection);
    let token_url = text("token_url")?
        .or(default_token.map(str::to_string))
        .ok_or_else(|| {
            Error::config("OAuth needs a `token_url` setting")
                .with_context("connection", &connection.id)
        })?;
    let mut config = OAuthConfig::new(client_id, token_url);
    if let Some(url) = text("auth_url")?.or(default_auth.map(str::to_string)) {
        config = config.with_auth_url(url);
    }
    if let Some(v) = settings.get("scopes") {
        let scopes = v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| {
                Error::config("`scopes` is an array of strings")
                    .with_context("connection", &connection.id)
            })?;
        config = config.with_scopes(scopes);
    }
    let client_auth = match text("client_auth")?.as_deref() {
        None => default_client_auth,
        Some("basic") => ClientAuth::Basic,
        Some("request_body") => ClientAuth::RequestBody,
        Some(other) => {
            return Err(
                Error::config("`client_auth` is \"basic\" or \"request_body\"")
                    .with_context("connection", &connection.id)
                    .with_context("value", other),
            );
        }
    };
    config = config.with_client_auth(client_auth);
    if let Some(secret) = secrets.get("client_secret") {
        config = config.with_client_secret(secret.expose_secret());
    }
    Ok(Some(config))
}

fn platform_oauth_defaults(
    connection: &ConnectionConfig,
) -> (Option<&'static str>, Option<&'static str>, ClientAuth) {
    match connection.platform.as_str() {
        #[cfg(feature = "frontapp")]
        apex_connect_frontapp::NAME => (
            Some(apex_connect_frontapp::connector::OAUTH_AUTHORIZE_URL),
            Some(apex_connect_frontapp::connector::OAUTH_TOKEN_URL),
            ClientAuth::Basic,
        ),
        #[cfg(feature = "hubspot")]
        apex_connect_hubspot::NAME => (
            Some(apex_connect_hubspot::config::OAUTH_AUTHORIZE_URL),
            Some(apex_connect_hubspot::config::OAUTH_TOKEN_URL),
            ClientAuth::RequestBody,
        ),
        _ => (None, None, ClientAuth::Basic),
    }
}

/// The status detail of a connection whose OAuth grant is gone.
pub fn reauth_detail(platform: &str, connection: &str) -> String {
    format!(
        "the OAuth grant was revoked or has expired: run `apex-connect connect {platform} \
         --connection {connection}`"
    )
}

/// Marks a connection `NeedsReauth` in the store, with [`reauth_detail`] (what the
/// [`TokenManager`]s of the built-in factories do when the grant is gone).
///
/// # Errors
/// `Storage`, or `NotFound` for a connection the store does not know.
pub async fn mark_needs_reauth(
    store: &dyn StateStore,
    connection: &ConnectionId,
    platform: &str,
) -> Result<()> {
    tracing::warn!(connection = %connection, "connection needs re-authorization");
    store
        .set_connection_status(
            connection,
            ConnectionStatus::NeedsReauth,
            Some(&reauth_detail(platform, connection.as_str())),
        )
        .await
}

/// Builds a connector for one connection.
pub type ConnectorFactory =
    Arc<dyn Fn(FactoryContext<'_>) -> Result<Arc<dyn Connector>> + Send + Sync>;

/// Platform name -> [`ConnectorFactory`].
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    factories: BTreeMap<String, ConnectorFactory>,
}

impl fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorRegistry")
            .field("platforms", &self.factories.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ConnectorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The platforms compiled into this build (`memory` with the `memory` feature).
    pub fn builtin() -> Self {
        #[allow(unused_mut)]
        let mut r = Self::new();
        #[cfg(feature = "memory")]
        r.register(memory::NAME, Arc::new(memory::factory));
        #[cfg(feature = "frontapp")]
        r.register(apex_connect_frontapp::NAME, Arc::new(platforms::frontapp));
        #[cfg(feature = "hubspot")]
        r.register(apex_connect_hubspot::NAME, Arc::new(platforms::hubspot));
        r
    }

    /// Adds (or replaces) the factory of `platform`.
    pub fn register(
        &mut self,
        platform: impl Into<String>,
        factory: ConnectorFactory,
    ) -> &mut Self {
        self.factories.insert(platform.into(), factory);
        self
    }

    /// The registered platform names.
    pub fn platforms(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the connector of a connection.
    ///
    /// # Errors
    /// `Config` for an unknown platform; the factory's errors otherwise.
    pub fn build(&self, ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let f = self
            .factories
            .get(&ctx.connection.platform)
            .ok_or_else(|| {
                Error::config("no connector for this platform in this build")
                    .with_context("platform", &ctx.connection.platform)
                    .with_context(
                        "known",
                        self.factories.keys().cloned().collect::<Vec<_>>().join(","),
                    )
            })?;
        f(ctx).map_err(|e| e.with_context("connection", &ctx.connection.id))
    }
}

/// Factories of the platform crates compiled in (features `frontapp`, `hubspot`).
#[cfg(any(feature = "frontapp", feature = "hubspot"))]
pub mod platforms {
    use std::sync::Arc;

    use apex_connect_core::{Connector, Error, Result};

    use super::FactoryContext;

    fn int_setting(ctx: &FactoryContext<'_>, key: &str) -> Result<Option<u64>> {
        match ctx.connection.settings.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::config("setting must be a non-negative integer")
                        .with_context("setting", key)
                }),
        }
    }

    /// FrontApp: OAuth (settings `client_id`, optional `token_url`/`auth_url`/`scopes`,
    /// secret `client_secret`; see [`oauth_config`](super::oauth_config)) when the store holds
    /// the connection's tokens or no `api_token` is set, else secret `api_token`;
    /// `webhook_secret` (app webhooks; enables them), `rule_webhook_secret`; settings
    /// `page_size`; `base_url`, `streams`.
    ///
    /// # Errors
    /// `Config` for missing credentials or a bad setting.
    #[cfg(feature = "frontapp")]
    pub fn frontapp(ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let c = ctx.connection;
        let mut b = apex_connect_frontapp::FrontConnector::builder();
        b = if ctx.use_oauth("api_token") {
            b.oauth(ctx.token_manager()?)
        } else {
            b.api_token(ctx.secrets.require("api_token", c)?.clone())
        };
        if let Some(url) = &c.base_url {
            b = b.base_url(url.clone());
        }
        if !c.streams.is_empty() {
            b = b.streams(c.streams.clone());
        }
        if let Some(n) = int_setting(&ctx, "page_size")? {
            b = b.page_size(u32::try_from(n).unwrap_or(u32::MAX));
        }
        if let Some(s) = ctx.secrets.get("webhook_secret") {
            b = b.webhook_secret(s.clone());
        }
        if let Some(s) = ctx.secrets.get("rule_webhook_secret") {
            b = b.rule_webhook_secret(s.clone());
        }
        Ok(Arc::new(b.build()?))
    }

    /// HubSpot: OAuth (settings `client_id`, optional `token_url`/`auth_url`/`scopes`, secret
    /// `client_secret`; see [`oauth_config`](super::oauth_config)) when the store holds the
    /// connection's tokens or no `private_app_token` is set, else secret `private_app_token`;
    /// `client_secret` (webhook signatures; enables webhooks); settings `app_id`,
    /// `webhook_target_url` (as configured in HubSpot, signed by v2/v3), `page_size`;
    /// `base_url`.
    ///
    /// # Errors
    /// `Config` for missing credentials or a bad setting.
    #[cfg(feature = "hubspot")]
    pub fn hubspot(ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let c = ctx.connection;
        let mut b = apex_connect_hubspot::HubSpotConnector::builder();
        b = if ctx.use_oauth("private_app_token") {
            b.oauth(ctx.token_manager()?)
        } else {
            b.private_app_token(ctx.secrets.require("private_app_token", c)?.clone())
        };
        if let Some(url) = &c.base_url {
            b = b.base_url(url.clone());
        }
        if let Some(s) = ctx.secrets.get("client_secret") {
            b = b.client_secret(s.clone());
        }
        if let Some(url) = c
            .settings
            .get("webhook_target_url")
            .and_then(|v| v.as_str())
        {
            b = b.webhook_target_url(url.to_string());
        }
        if let Some(id) = int_setting(&ctx, "app_id")? {
            b = b.app_id(id);
        }
        if let Some(n) = int_setting(&ctx, "page_size")? {
            b = b.page_size(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Ok(Arc::new(b.build()?))
    }
}

/// The `memory` platform ([`apex_connect_testkit::MemoryConnector`]), for tests and demos only.
///
/// Settings: `page_size` (default 100), `generated = { stream = count }` (streams of generated
/// records). Secret: `webhook_secret` (Standard Webhooks signing key; default `"memory-secret"`
/// so a demo runs without setup).
#[cfg(feature = "memory")]
pub mod memory {
    use std::sync::Arc;

    use apex_connect_core::{Connector, Error, Result};
    use apex_connect_testkit::MemoryConnector;
    use secrecy::ExposeSecret;

    use super::FactoryContext;

    /// The platform name.
    pub const NAME: &str = "memory";

    /// Builds a [`MemoryConnector`] from a connection's settings.
    ///
    /// # Errors
    /// `Config` for settings of the wrong type.
    pub fn factory(ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let settings = &ctx.connection.settings;
        let page_size = match settings.get("page_size") {
            None => 100,
            Some(v) => v
                .as_integer()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| Error::config("memory `page_size` must be a positive integer"))?,
        };
        let mut streams: Vec<String> = ctx.connection.streams.clone();
        let generated = match settings.get("generated") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| {
                    v.as_integer()
                        .and_then(|n| u64::try_from(n).ok())
                        .map(|n| (k.clone(), n))
                        .ok_or_else(|| Error::config("memory `generated` counts are integers"))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(Error::config("memory `generated` is a table")),
        };
        for (s, _) in &generated {
            if !streams.contains(s) {
                streams.push(s.clone());
            }
        }
        if streams.is_empty() {
            streams.push("items".into());
        }
        let secret = ctx
            .secrets
            .get("webhook_secret")
            .map(|s| s.expose_secret().as_bytes().to_vec())
            .unwrap_or_else(|| b"memory-secret".to_vec());
        let mut c = MemoryConnector::new(streams, page_size, &secret);
        for (s, n) in generated {
            c = c.with_generated(s, n, 100);
        }
        Ok(Arc::new(c))
    }
}
