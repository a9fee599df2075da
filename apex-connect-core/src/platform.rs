//! Platforms as plug-ins: what a platform crate exports so that hosts, the server, the CLI and
//! the Python bindings can configure, authenticate and build its connectors without naming it.
//!
//! Each platform crate exports one [`Platform`] descriptor (FrontApp's is
//! `apex_connect_frontapp::PLATFORM`): its name, the secrets it needs, its OAuth defaults and
//! grants, how it reads its settings, and a factory to `Arc<dyn Connector>`. The facade
//! assembles the compiled-in descriptors into a [`Platforms`] list; everything else iterates it.
//!
//! The connection's authentication is resolved here, once for every platform
//! ([`resolve_auth`]): a static credential from the secrets (an API token), or a
//! [`TokenManager`] built for the grant the connection uses — authorization code with
//! refresh-token rotation, client credentials, or JWT bearer (the private key from a secret).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::connector::Connector;
use crate::error::{Error, Result};
use crate::model::ConnectionId;
use crate::oauth::{
    ClientAuth, ClientCredentialsRefresher, JwtAssertion, JwtBearerRefresher, OAuthClient,
    OAuthConfig, ReauthHook, TokenManager, TokenRefresher,
};
use crate::token::TokenStore;

/// What a secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretKind {
    /// A static API credential (an API token, a private app token): with it the connection
    /// needs no OAuth.
    Credential,
    /// The OAuth client secret (`client_secret`).
    OAuthClient,
    /// A private key signing JWT-bearer assertions (`private_key`, PEM).
    SigningKey,
    /// A webhook signing secret.
    Webhook,
    /// Anything else.
    Other,
}

/// One secret a platform reads from a connection's secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecretSpec {
    /// The secret's name in the connection's secrets (`api_token`, `client_secret`, ...).
    pub name: &'static str,
    /// What it is for, for help texts and error messages.
    pub purpose: &'static str,
    /// Its kind.
    pub kind: SecretKind,
}

impl SecretSpec {
    /// A secret `name` of `kind` used for `purpose`.
    pub const fn new(name: &'static str, kind: SecretKind, purpose: &'static str) -> Self {
        SecretSpec {
            name,
            purpose,
            kind,
        }
    }
}

/// An OAuth 2.0 grant a platform supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Grant {
    /// Authorization code with PKCE and state (a user connects in a browser).
    AuthorizationCode,
    /// Refresh token (with rotation when the platform rotates).
    RefreshToken,
    /// Client credentials (server to server).
    ClientCredentials,
    /// JWT bearer (RFC 7523; Salesforce server-to-server, Google service accounts).
    JwtBearer,
}

/// A platform's OAuth 2.0 endpoints and conventions; a connection's settings may override each.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthDefaults {
    /// The authorization endpoint (authorization-code flow).
    pub auth_url: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    /// The revocation endpoint (RFC 7009), when the platform has one.
    pub revoke_url: Option<String>,
    /// Scopes asked for by default.
    pub scopes: Vec<String>,
    /// How the client authenticates at the token endpoint.
    pub client_auth: ClientAuth,
    /// The grants the platform supports.
    pub grants: Vec<Grant>,
    /// The `aud` of JWT-bearer assertions (default: the token URL).
    pub jwt_audience: Option<String>,
    /// Extra parameters of the authorize URL (`access_type=offline`, ...).
    pub authorize_params: Vec<(String, String)>,
}

impl OAuthDefaults {
    /// Defaults with a token endpoint, the authorization-code and refresh grants, Basic client
    /// authentication, and nothing else.
    pub fn new(token_url: impl Into<String>) -> Self {
        OAuthDefaults {
            auth_url: None,
            token_url: token_url.into(),
            revoke_url: None,
            scopes: Vec::new(),
            client_auth: ClientAuth::Basic,
            grants: vec![Grant::AuthorizationCode, Grant::RefreshToken],
            jwt_audience: None,
            authorize_params: Vec::new(),
        }
    }

    /// Sets the authorization endpoint.
    pub fn auth_url(mut self, url: impl Into<String>) -> Self {
        self.auth_url = Some(url.into());
        self
    }

    /// Sets the revocation endpoint.
    pub fn revoke_url(mut self, url: impl Into<String>) -> Self {
        self.revoke_url = Some(url.into());
        self
    }

    /// Sets the default scopes.
    pub fn scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the client authentication.
    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Sets the supported grants.
    pub fn grants(mut self, grants: impl IntoIterator<Item = Grant>) -> Self {
        self.grants = grants.into_iter().collect();
        self
    }

    /// Sets the JWT-bearer audience.
    pub fn jwt_audience(mut self, aud: impl Into<String>) -> Self {
        self.jwt_audience = Some(aud.into());
        self
    }

    /// Adds a parameter to the authorize URL.
    pub fn authorize_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.authorize_params.push((name.into(), value.into()));
        self
    }

    /// Whether `grant` is supported.
    pub fn supports(&self, grant: Grant) -> bool {
        self.grants.contains(&grant)
    }
}

/// The setting names every platform shares: how the connection authenticates. They are not
/// passed to the platform's own settings type ([`Settings::parse`] leaves them out).
pub const AUTH_SETTINGS: &[&str] = &[
    "auth",
    "client_id",
    "token_url",
    "auth_url",
    "revoke_url",
    "scopes",
    "client_auth",
    "refresh_skew",
    "jwt_subject",
    "jwt_audience",
    "jwt_key_id",
    "jwt_lifetime",
];

/// How a connection authenticates (setting `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMode {
    /// A static credential from the secrets (API token, private app token).
    Token,
    /// OAuth tokens obtained by the authorization-code flow (`apex-connect connect`), renewed
    /// with the refresh-token grant.
    Oauth,
    /// The client-credentials grant, run again when the token expires.
    ClientCredentials,
    /// The JWT-bearer grant, run again with a fresh assertion when the token expires.
    JwtBearer,
}

impl AuthMode {
    /// The setting's value: `token`, `oauth`, `client_credentials`, `jwt_bearer`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Token => "token",
            AuthMode::Oauth => "oauth",
            AuthMode::ClientCredentials => "client_credentials",
            AuthMode::JwtBearer => "jwt_bearer",
        }
    }
}

/// The shared authentication settings of a connection (see [`AUTH_SETTINGS`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AuthSettings {
    /// The mode; default: `oauth` when `client_id` is set and either tokens are stored or no
    /// static credential is, else `token`.
    pub auth: Option<AuthMode>,
    /// The OAuth client id (the JWT issuer for JWT bearer).
    pub client_id: Option<String>,
    /// Overrides the platform's token endpoint.
    pub token_url: Option<String>,
    /// Overrides the platform's authorization endpoint.
    pub auth_url: Option<String>,
    /// Overrides the platform's revocation endpoint.
    pub revoke_url: Option<String>,
    /// Overrides the platform's default scopes.
    pub scopes: Option<Vec<String>>,
    /// Overrides the platform's client authentication (`basic` or `request_body`).
    pub client_auth: Option<ClientAuth>,
    /// How long before expiry tokens are renewed (`"60s"`; capped by a fraction of the
    /// token's lifetime).
    pub refresh_skew: Option<String>,
    /// The JWT `sub` (Salesforce: the username; Google: a user to impersonate).
    pub jwt_subject: Option<String>,
    /// Overrides the JWT `aud`.
    pub jwt_audience: Option<String>,
    /// The JWT `kid` header (Google: the private key id).
    pub jwt_key_id: Option<String>,
    /// The JWT lifetime (`"3m"`; at most an hour).
    pub jwt_lifetime: Option<String>,
}

/// A connection's settings (no secrets): a JSON object, read by the platform into its own
/// typed settings ([`Settings::parse`]) and by core for authentication ([`Settings::auth`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings(serde_json::Map<String, serde_json::Value>);

impl Settings {
    /// Settings from a JSON object.
    pub fn new(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Settings(map)
    }

    /// Settings from a JSON value (`null` is empty).
    ///
    /// # Errors
    /// `Config` when `value` is neither an object nor `null`.
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        match value {
            serde_json::Value::Object(m) => Ok(Settings(m)),
            serde_json::Value::Null => Ok(Settings::default()),
            _ => Err(Error::config("connection settings must be a table")),
        }
    }

    /// One raw setting.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.get(key)
    }

    /// Sets one setting.
    pub fn insert(&mut self, key: impl Into<String>, value: serde_json::Value) {
        self.0.insert(key.into(), value);
    }

    /// All settings as a JSON object.
    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }

    /// The platform's typed settings: every setting but the shared authentication ones
    /// ([`AUTH_SETTINGS`]), deserialized into `T` (use `#[serde(deny_unknown_fields)]` so a
    /// misspelt setting is an error).
    ///
    /// # Errors
    /// `Config` naming the setting and what was wrong with it.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        let own: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .filter(|(k, _)| !AUTH_SETTINGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(serde_json::Value::Object(own)).map_err(|e| {
            Error::config("invalid connection setting")
                .with_context("problem", e.to_string())
                .set_source(e)
        })
    }

    /// The shared authentication settings.
    ///
    /// # Errors
    /// `Config` for a setting of the wrong type or value.
    pub fn auth(&self) -> Result<AuthSettings> {
        let shared: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .filter(|(k, _)| AUTH_SETTINGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        serde_json::from_value(serde_json::Value::Object(shared)).map_err(|e| {
            Error::config("invalid authentication setting")
                .with_context("problem", e.to_string())
                .set_source(e)
        })
    }
}

/// The secrets of one connection (name -> value), with where each came from for messages.
/// `Debug` shows only the names.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretString>,
    sources: BTreeMap<String, String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// No secrets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Secrets from explicit values.
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
            sources: BTreeMap::new(),
        }
    }

    /// Secrets read from environment variables: `names` maps a secret name to the variable
    /// holding it (`api_token = "FRONT_API_TOKEN"`); an unset variable is simply absent.
    pub fn from_env_names<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_lookup(names, |var| std::env::var(var).ok())
    }

    /// Like [`Secrets::from_env_names`] with another lookup (tests).
    pub fn from_lookup<'a>(
        names: impl IntoIterator<Item = (&'a str, &'a str)>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut s = Secrets::default();
        for (name, var) in names {
            s.sources.insert(name.to_string(), var.to_string());
            if let Some(v) = lookup(var) {
                s.values.insert(name.to_string(), SecretString::from(v));
            }
        }
        s
    }

    /// Adds (or replaces) a secret.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) {
        self.values.insert(name.into(), value);
    }

    /// The secret `name`, if set.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.values.get(name)
    }

    /// The secret `name`.
    ///
    /// # Errors
    /// `Config` naming the secret and, when known, the variable that should hold it.
    pub fn require(&self, name: &str) -> Result<&SecretString> {
        self.values.get(name).ok_or_else(|| {
            let mut e = Error::config("a secret the connector needs is not set")
                .with_context("secret", name);
            if let Some(var) = self.sources.get(name) {
                e = e.with_context("variable", var);
            }
            e
        })
    }

    /// The names of the secrets set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// How a built connector authenticates, as resolved by [`resolve_auth`].
#[derive(Clone)]
#[non_exhaustive]
pub enum ConnectionAuth {
    /// With a static credential from its secrets (the platform knows which).
    Secrets,
    /// With OAuth tokens from this manager (it refreshes, rotates and re-runs grants).
    OAuth(Arc<TokenManager>),
}

impl fmt::Debug for ConnectionAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionAuth::Secrets => f.write_str("Secrets"),
            ConnectionAuth::OAuth(m) => f.debug_tuple("OAuth").field(m.connection()).finish(),
        }
    }
}

/// What a platform's factory gets to build a connector.
#[derive(Debug)]
#[non_exhaustive]
pub struct BuildContext<'a> {
    /// The connection's id.
    pub connection: &'a ConnectionId,
    /// Its settings.
    pub settings: &'a Settings,
    /// The API base URL to use instead of the platform's (simulators, sandboxes).
    pub base_url: Option<&'a str>,
    /// The streams to sync (empty: all).
    pub streams: &'a [String],
    /// Its secrets.
    pub secrets: &'a Secrets,
    /// How it authenticates.
    pub auth: ConnectionAuth,
}

impl<'a> BuildContext<'a> {
    /// A context from its parts.
    pub fn new(
        connection: &'a ConnectionId,
        settings: &'a Settings,
        secrets: &'a Secrets,
        auth: ConnectionAuth,
    ) -> Self {
        BuildContext {
            connection,
            settings,
            base_url: None,
            streams: &[],
            secrets,
            auth,
        }
    }

    /// Sets the base URL.
    pub fn with_base_url(mut self, url: Option<&'a str>) -> Self {
        self.base_url = url;
        self
    }

    /// Sets the streams.
    pub fn with_streams(mut self, streams: &'a [String]) -> Self {
        self.streams = streams;
        self
    }

    /// The platform's typed settings (see [`Settings::parse`]).
    ///
    /// # Errors
    /// `Config`.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T> {
        self.settings.parse()
    }
}

/// A platform, as a plug-in: everything hosts need to configure, authenticate and build its
/// connectors. Each platform crate exports one (a `static` or a unit struct).
///
/// # Behavior
/// - [`check_settings`](Platform::check_settings) accepts exactly the settings
///   [`build`](Platform::build) accepts (hosts call it when they load a configuration, so a
///   typo fails at start, not at the first sync).
/// - [`build`](Platform::build) does no I/O: it builds the HTTP stack and returns.
/// - [`oauth`](Platform::oauth) is `None` for platforms without OAuth.
pub trait Platform: Send + Sync + fmt::Debug + 'static {
    /// The platform's name (`"frontapp"`), the `platform` of connections.
    fn name(&self) -> &'static str;

    /// One line saying what it connects to.
    fn description(&self) -> &'static str;

    /// The secrets it reads, with what each is for.
    fn secrets(&self) -> &'static [SecretSpec];

    /// Its OAuth endpoints and grants for a connection with `settings` (the host may depend
    /// on them: a Salesforce sandbox, a Mixpanel data residency). Default: no OAuth.
    ///
    /// # Errors
    /// `Config` for settings that choose no valid endpoint.
    fn oauth(&self, settings: &Settings) -> Result<Option<OAuthDefaults>> {
        let _ = settings;
        Ok(None)
    }

    /// Validates a connection's settings.
    ///
    /// # Errors
    /// `Config` naming the bad setting.
    fn check_settings(&self, settings: &Settings) -> Result<()>;

    /// Builds the connector of one connection.
    ///
    /// # Errors
    /// `Config` for bad settings or missing secrets.
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>>;
}

/// The platforms compiled into a host (the facade assembles it from its features).
#[derive(Debug, Clone, Default)]
pub struct Platforms(Vec<Arc<dyn Platform>>);

impl Platforms {
    /// No platforms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `platform` (replacing one of the same name).
    pub fn with(mut self, platform: Arc<dyn Platform>) -> Self {
        self.add(platform);
        self
    }

    /// Adds `platform` (replacing one of the same name).
    pub fn add(&mut self, platform: Arc<dyn Platform>) {
        self.0.retain(|p| p.name() != platform.name());
        self.0.push(platform);
    }

    /// The platform named `name`.
    ///
    /// # Errors
    /// `Config` listing the platforms this build knows.
    pub fn get(&self, name: &str) -> Result<&Arc<dyn Platform>> {
        self.0.iter().find(|p| p.name() == name).ok_or_else(|| {
            Error::config("no connector for this platform in this build")
                .with_context("platform", name)
                .with_context("known", self.names().collect::<Vec<_>>().join(","))
        })
    }

    /// The platforms.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Platform>> {
        self.0.iter()
    }

    /// Their names.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|p| p.name())
    }
}

/// The OAuth configuration of a connection: the platform's defaults overridden by the
/// connection's settings, the client secret from its secrets. `None` when the connection has
/// no `client_id` (or the platform has no OAuth).
///
/// # Errors
/// `Config` for bad settings, or OAuth settings on a platform without OAuth and no `token_url`.
pub fn oauth_config(
    platform: &dyn Platform,
    settings: &Settings,
    secrets: &Secrets,
) -> Result<Option<OAuthConfig>> {
    let auth = settings.auth()?;
    let Some(client_id) = auth.client_id.clone() else {
        return Ok(None);
    };
    let defaults = platform.oauth(settings)?;
    let token_url = auth
        .token_url
        .clone()
        .or_else(|| defaults.as_ref().map(|d| d.token_url.clone()))
        .ok_or_else(|| {
            Error::config("OAuth needs a `token_url` setting (the platform has no default)")
                .with_context("platform", platform.name())
        })?;
    let mut config = OAuthConfig::new(client_id, token_url);
    if let Some(url) = auth
        .auth_url
        .clone()
        .or_else(|| defaults.as_ref().and_then(|d| d.auth_url.clone()))
    {
        config = config.with_auth_url(url);
    }
    let scopes = auth
        .scopes
        .clone()
        .or_else(|| defaults.as_ref().map(|d| d.scopes.clone()))
        .unwrap_or_default();
    config = config.with_scopes(scopes);
    let client_auth = auth
        .client_auth
        .or_else(|| defaults.as_ref().map(|d| d.client_auth))
        .unwrap_or_default();
    config = config.with_client_auth(client_auth);
    if let Some(url) = auth
        .revoke_url
        .clone()
        .or_else(|| defaults.as_ref().and_then(|d| d.revoke_url.clone()))
    {
        config = config.with_revocation_url(url);
    }
    if let Some(d) = &defaults {
        for (k, v) in &d.authorize_params {
            config = config.with_authorize_param(k.clone(), v.clone());
        }
    }
    if let Some(secret) = secrets.get("client_secret") {
        config = config.with_client_secret(secret.expose_secret());
    }
    Ok(Some(config))
}

/// The authentication mode of a connection: the `auth` setting, else `oauth` when a
/// `client_id` is set and either tokens are stored (`tokens_stored`) or no static credential
/// ([`SecretKind::Credential`]) is set, else `token`.
///
/// # Errors
/// `Config` for bad settings.
pub fn auth_mode(
    platform: &dyn Platform,
    settings: &Settings,
    secrets: &Secrets,
    tokens_stored: bool,
) -> Result<AuthMode> {
    let auth = settings.auth()?;
    if let Some(mode) = auth.auth {
        return Ok(mode);
    }
    let has_credential = platform
        .secrets()
        .iter()
        .any(|s| s.kind == SecretKind::Credential && secrets.get(s.name).is_some());
    Ok(
        if auth.client_id.is_some() && (tokens_stored || !has_credential) {
            AuthMode::Oauth
        } else {
            AuthMode::Token
        },
    )
}

/// What [`resolve_auth`] needs besides the platform and settings.
#[non_exhaustive]
pub struct AuthInputs<'a> {
    /// The connection.
    pub connection: &'a ConnectionId,
    /// Its secrets.
    pub secrets: &'a Secrets,
    /// Where its OAuth tokens are kept (encrypted by persistent stores).
    pub tokens: Arc<dyn TokenStore>,
    /// Whether tokens are stored for the connection (after `apex-connect connect`).
    pub tokens_stored: bool,
    /// Called when the grant is gone (the host marks the connection as needing
    /// re-authorization).
    pub on_reauth_needed: Option<ReauthHook>,
    /// The HTTP client for the token endpoint (default:
    /// [`default_http_client`](crate::oauth::default_http_client): timeouts, no redirects).
    pub http: Option<reqwest::Client>,
}

impl fmt::Debug for AuthInputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthInputs")
            .field("connection", self.connection)
            .field("secrets", self.secrets)
            .field("tokens_stored", &self.tokens_stored)
            .finish_non_exhaustive()
    }
}

impl<'a> AuthInputs<'a> {
    /// Inputs for `connection` with `secrets` and its token store.
    pub fn new(
        connection: &'a ConnectionId,
        secrets: &'a Secrets,
        tokens: Arc<dyn TokenStore>,
    ) -> Self {
        AuthInputs {
            connection,
            secrets,
            tokens,
            tokens_stored: false,
            on_reauth_needed: None,
            http: None,
        }
    }

    /// Says whether tokens are stored for the connection.
    pub fn tokens_stored(mut self, stored: bool) -> Self {
        self.tokens_stored = stored;
        self
    }

    /// Sets the re-authorization hook.
    pub fn on_reauth_needed(mut self, hook: ReauthHook) -> Self {
        self.on_reauth_needed = Some(hook);
        self
    }

    /// Sets the token endpoint's HTTP client.
    pub fn http(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }
}

fn duration_setting(name: &'static str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text).map_err(|e| {
        Error::config("setting is not a duration such as \"60s\" or \"5m\"")
            .with_context("setting", name)
            .with_context("value", text)
            .set_source(e)
    })
}

/// Resolves how a connection authenticates: a static credential, or a [`TokenManager`] for
/// its grant (authorization code + refresh, client credentials, or JWT bearer with the private
/// key from the `private_key` secret, or from a Google service-account key file in the
/// `service_account_json` secret: see [`crate::service_account`]).
///
/// # Errors
/// `Config` for a grant the platform does not support, missing OAuth settings, a missing
/// `private_key` for JWT bearer, or a key that is not an RSA private key in PEM.
pub fn resolve_auth(
    platform: &dyn Platform,
    settings: &Settings,
    inputs: AuthInputs<'_>,
) -> Result<ConnectionAuth> {
    // A Google service-account key file (`service_account_json`) stands for the JWT-bearer
    // settings and the `private_key` secret (see `crate::service_account`).
    if let Some((settings, secrets)) = crate::service_account::expand(settings, inputs.secrets)? {
        return resolve_auth(
            platform,
            &settings,
            AuthInputs {
                secrets: &secrets,
                ..inputs
            },
        );
    }
    let mode = auth_mode(platform, settings, inputs.secrets, inputs.tokens_stored)?;
    if mode == AuthMode::Token {
        return Ok(ConnectionAuth::Secrets);
    }
    let auth = settings.auth()?;
    let defaults = platform.oauth(settings)?;
    let config = oauth_config(platform, settings, inputs.secrets)?.ok_or_else(|| {
        Error::config("this authentication needs a `client_id` setting")
            .with_context("auth", mode.as_str())
            .with_context("connection", inputs.connection)
    })?;
    let grant = match mode {
        AuthMode::Oauth => Grant::RefreshToken,
        AuthMode::ClientCredentials => Grant::ClientCredentials,
        AuthMode::JwtBearer => Grant::JwtBearer,
        AuthMode::Token => unreachable_token(),
    };
    if let Some(d) = &defaults
        && !d.supports(grant)
        && !(grant == Grant::RefreshToken && d.supports(Grant::AuthorizationCode))
    {
        return Err(Error::config("the platform does not support this grant")
            .with_context("platform", platform.name())
            .with_context("auth", mode.as_str()));
    }
    let http = match inputs.http {
        Some(h) => h,
        None => crate::oauth::default_http_client()?,
    };
    let client = OAuthClient::new(config.clone(), http)?;
    let refresher: Arc<dyn TokenRefresher> = match mode {
        AuthMode::ClientCredentials => Arc::new(ClientCredentialsRefresher::new(
            client,
            config.scopes.clone(),
        )),
        AuthMode::JwtBearer => {
            let key = inputs.secrets.require("private_key").map_err(|e| {
                e.with_context(
                    "purpose",
                    "the RSA private key (PEM) signing JWT assertions",
                )
            })?;
            let audience = auth
                .jwt_audience
                .clone()
                .or_else(|| defaults.as_ref().and_then(|d| d.jwt_audience.clone()))
                .unwrap_or_else(|| config.token_url.clone());
            let mut assertion = JwtAssertion::from_rsa_pem(
                key.expose_secret().as_bytes(),
                config.client_id.clone(),
                audience,
            )?;
            if let Some(sub) = &auth.jwt_subject {
                assertion = assertion.subject(sub.clone());
            }
            if !config.scopes.is_empty() {
                assertion = assertion.scope(config.scopes.join(" "));
            }
            if let Some(kid) = &auth.jwt_key_id {
                assertion = assertion.key_id(kid.clone());
            }
            if let Some(l) = &auth.jwt_lifetime {
                assertion = assertion.lifetime(duration_setting("jwt_lifetime", l)?);
            }
            Arc::new(JwtBearerRefresher::new(client, assertion))
        }
        _ => Arc::new(client),
    };
    let mut b = TokenManager::builder(inputs.connection.clone(), inputs.tokens, refresher);
    if mode != AuthMode::Oauth {
        // No user grant to wait for: the first use runs the grant.
        b = b.obtain_when_missing(true);
    }
    if let Some(hook) = inputs.on_reauth_needed {
        b = b.on_reauth_needed(move |id| hook(id));
    }
    if let Some(skew) = &auth.refresh_skew {
        b = b.skew(duration_setting("refresh_skew", skew)?);
    }
    Ok(ConnectionAuth::OAuth(Arc::new(b.build())))
}

#[inline]
fn unreachable_token() -> Grant {
    // `resolve_auth` returns early for `AuthMode::Token`; kept total without a panic.
    Grant::RefreshToken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MemoryTokenStore;
    use serde_json::json;

    #[derive(Debug)]
    struct Demo;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct DemoSettings {
        #[serde(default)]
        page_size: Option<u32>,
    }

    static SECRETS: &[SecretSpec] = &[
        SecretSpec::new("api_token", SecretKind::Credential, "the API token"),
        SecretSpec::new(
            "client_secret",
            SecretKind::OAuthClient,
            "the OAuth client secret",
        ),
    ];

    impl Platform for Demo {
        fn name(&self) -> &'static str {
            "demo"
        }
        fn description(&self) -> &'static str {
            "a demo platform"
        }
        fn secrets(&self) -> &'static [SecretSpec] {
            SECRETS
        }
        fn oauth(&self, _: &Settings) -> Result<Option<OAuthDefaults>> {
            Ok(Some(
                OAuthDefaults::new("https://demo.example/token")
                    .auth_url("https://demo.example/authorize")
                    .revoke_url("https://demo.example/revoke")
                    .scopes(["read"])
                    .grants([
                        Grant::AuthorizationCode,
                        Grant::RefreshToken,
                        Grant::JwtBearer,
                    ]),
            ))
        }
        fn check_settings(&self, settings: &Settings) -> Result<()> {
            settings.parse::<DemoSettings>().map(|_| ())
        }
        fn build(&self, _: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
            Err(Error::unsupported("not needed here"))
        }
    }

    fn settings(v: serde_json::Value) -> Settings {
        Settings::from_value(v).unwrap()
    }

    #[test]
    fn platform_settings_leave_the_shared_auth_keys_out() {
        let s = settings(json!({"page_size": 5, "client_id": "abc", "scopes": ["x"]}));
        Demo.check_settings(&s).unwrap();
        let e = Demo
            .check_settings(&settings(json!({"page_sise": 5})))
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(format!("{e}").contains("page_sise"), "{e}");
        assert!(
            settings(json!({"auth": "magic"})).auth().is_err(),
            "unknown auth mode"
        );
        assert!(Settings::from_value(json!([1])).is_err());
    }

    #[test]
    fn oauth_config_takes_defaults_and_overrides() {
        let secrets = Secrets::from_values([("client_secret", "s3cret")]);
        let c = oauth_config(&Demo, &settings(json!({"client_id": "abc"})), &secrets)
            .unwrap()
            .unwrap();
        assert_eq!(c.token_url, "https://demo.example/token");
        assert_eq!(
            c.auth_url.as_deref(),
            Some("https://demo.example/authorize")
        );
        assert_eq!(
            c.revocation_url.as_deref(),
            Some("https://demo.example/revoke")
        );
        assert_eq!(c.scopes, vec!["read".to_string()]);
        assert!(c.client_secret.is_some());
        let c = oauth_config(
            &Demo,
            &settings(
                json!({"client_id": "abc", "token_url": "http://127.0.0.1:9/t", "scopes": []}),
            ),
            &secrets,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.token_url, "http://127.0.0.1:9/t");
        assert!(c.scopes.is_empty());
        assert!(
            oauth_config(&Demo, &settings(json!({})), &secrets)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_auth_mode_follows_settings_credentials_and_stored_tokens() {
        let none = Secrets::new();
        let token = Secrets::from_values([("api_token", "t")]);
        let oauth = settings(json!({"client_id": "abc"}));
        assert_eq!(
            auth_mode(&Demo, &settings(json!({})), &token, false).unwrap(),
            AuthMode::Token
        );
        assert_eq!(
            auth_mode(&Demo, &oauth, &none, false).unwrap(),
            AuthMode::Oauth
        );
        assert_eq!(
            auth_mode(&Demo, &oauth, &token, false).unwrap(),
            AuthMode::Token
        );
        assert_eq!(
            auth_mode(&Demo, &oauth, &token, true).unwrap(),
            AuthMode::Oauth
        );
        let explicit = settings(json!({"client_id": "abc", "auth": "token"}));
        assert_eq!(
            auth_mode(&Demo, &explicit, &none, true).unwrap(),
            AuthMode::Token
        );
    }

    #[tokio::test]
    async fn resolve_auth_builds_a_manager_per_grant() {
        let store: Arc<dyn TokenStore> = Arc::new(MemoryTokenStore::new());
        let id = ConnectionId::from("c1");
        let none = Secrets::new();
        let auth = resolve_auth(
            &Demo,
            &settings(json!({})),
            AuthInputs::new(
                &id,
                &Secrets::from_values([("api_token", "t")]),
                store.clone(),
            ),
        )
        .unwrap();
        assert!(matches!(auth, ConnectionAuth::Secrets));
        let auth = resolve_auth(
            &Demo,
            &settings(json!({"client_id": "abc"})),
            AuthInputs::new(&id, &none, store.clone()),
        )
        .unwrap();
        assert!(matches!(auth, ConnectionAuth::OAuth(_)), "{auth:?}");
        // JWT bearer needs the signing key from the secrets, never the settings.
        let e = resolve_auth(
            &Demo,
            &settings(json!({"client_id": "abc", "auth": "jwt_bearer"})),
            AuthInputs::new(&id, &none, store.clone()),
        )
        .unwrap_err();
        assert!(format!("{e}").contains("private_key"), "{e}");
        let e = resolve_auth(
            &Demo,
            &settings(json!({"client_id": "abc", "auth": "jwt_bearer"})),
            AuthInputs::new(
                &id,
                &Secrets::from_values([("private_key", "not a pem")]),
                store.clone(),
            ),
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        // The demo platform supports no client-credentials grant.
        let e = resolve_auth(
            &Demo,
            &settings(json!({"client_id": "abc", "auth": "client_credentials"})),
            AuthInputs::new(&id, &none, store),
        )
        .unwrap_err();
        assert!(format!("{e}").contains("grant"), "{e}");
        // Secrets never show in Debug.
        let shown = format!("{:?}", Secrets::from_values([("api_token", "zzz-secret")]));
        assert!(!shown.contains("zzz"), "{shown}");
    }
}
