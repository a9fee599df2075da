//! `OAuthClient`: the OAuth 2.0 grants, on the `oauth2` crate with our own `reqwest::Client`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardRevocableToken, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use url::Url;

use super::config::{ClientAuth, OAuthConfig};
use super::{Clock, system_clock};
use crate::error::{Error, ErrorKind, Result, redact_url};
use crate::token::{MAX_TOKEN_LIFETIME, TokenSet, duration_ms};
use crate::webhook::unix_ms;

/// The grant type URI of RFC 7523 (JWT bearer assertion).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The token endpoint's answer (RFC 6749 §5.1 plus the fields platforms add), parsed leniently
/// where platforms differ: numbers may be integers, floats, exponents or strings holding
/// them, `token_type` may be missing or in any case, and a platform field of an unexpected type
/// is ignored rather than failing the answer. Only `access_token` is required.
///
/// Every duration and timestamp goes through [`expires_in_duration`] / [`timestamp_ms`]:
/// checked, clamped to [`MAX_TOKEN_LIFETIME`], never an overflow.
#[derive(Clone, Serialize, Deserialize)]
struct PlatformTokenResponse {
    access_token: AccessToken,
    #[serde(default = "bearer_type", deserialize_with = "de_token_type")]
    token_type: BasicTokenType,
    /// Seconds from now (RFC 6749); see [`expires_in_duration`].
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
    #[serde(rename = "scope", default, deserialize_with = "de_scopes")]
    scopes: Option<Vec<Scope>>,
    /// Front: absolute expiry, seconds or milliseconds (decided by magnitude).
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
    /// Salesforce: the API host of the org.
    #[serde(default)]
    instance_url: Option<serde_json::Value>,
    /// Salesforce: when the token was issued, seconds or milliseconds (ms in practice).
    #[serde(default)]
    issued_at: Option<serde_json::Value>,
    /// Salesforce: the identity URL (signed together with `issued_at`).
    #[serde(default)]
    id: Option<serde_json::Value>,
    /// Salesforce: Base64 HMAC-SHA256 of `id` + `issued_at`, keyed with the client secret.
    #[serde(default)]
    signature: Option<serde_json::Value>,
}

impl fmt::Debug for PlatformTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformTokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn bearer_type() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn de_token_type<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<BasicTokenType, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(de)?;
    Ok(match v.as_ref().and_then(serde_json::Value::as_str) {
        Some(t) if t.eq_ignore_ascii_case("bearer") => BasicTokenType::Bearer,
        Some(t) if t.eq_ignore_ascii_case("mac") => BasicTokenType::Mac,
        Some(t) => BasicTokenType::Extension(t.to_string()),
        None => BasicTokenType::Bearer,
    })
}

/// `scope`: a space-delimited string (RFC 6749), or an array of strings (some platforms).
fn de_scopes<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<Option<Vec<Scope>>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(de)?;
    Ok(match v {
        Some(serde_json::Value::String(s)) => Some(
            s.split_whitespace()
                .map(|s| Scope::new(s.to_string()))
                .collect(),
        ),
        Some(serde_json::Value::Array(a)) => Some(
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .map(|s| Scope::new(s.to_string()))
                .collect(),
        ),
        _ => None,
    })
}

impl TokenResponse for PlatformTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.as_ref().and_then(expires_in_duration)
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

/// A JSON number, or a string holding one (`"3600"`, `" 3.6e3 "`), as a finite `f64`.
fn json_number(v: &serde_json::Value) -> Option<f64> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// `expires_in` as a lifetime: a positive number of seconds, clamped to
/// [`MAX_TOKEN_LIFETIME`]. Zero, negative, non-finite or non-numeric values mean "unknown"
/// (`None`): the token is then used until the API answers 401, rather than refreshed on
/// every call.
fn expires_in_duration(v: &serde_json::Value) -> Option<Duration> {
    let secs = json_number(v)?;
    if secs <= 0.0 {
        return None;
    }
    // Finite, positive and at most the maximum: `from_secs_f64` cannot panic.
    Some(Duration::from_secs_f64(
        secs.min(MAX_TOKEN_LIFETIME.as_secs_f64()),
    ))
}

/// Values at or above this are milliseconds, below it seconds (10^11 s is the year 5138;
/// 10^11 ms is 1973).
const MS_THRESHOLD: f64 = 1e11;

/// An absolute time (`expires_at`, `issued_at`) in seconds or milliseconds, decided by
/// magnitude, as Unix milliseconds. Zero, negative, non-finite or non-numeric: `None`.
/// Saturates at `i64::MAX` (callers clamp further).
fn timestamp_ms(v: &serde_json::Value) -> Option<i64> {
    let n = json_number(v)?;
    if n <= 0.0 {
        return None;
    }
    let ms = if n >= MS_THRESHOLD { n } else { n * 1000.0 };
    // `as` from a finite float saturates at the bounds of i64.
    Some(ms as i64)
}

type Inner = oauth2::Client<
    BasicErrorResponse,
    PlatformTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The `state` parameter of an authorization request (CSRF protection). Secret-typed:
/// `Debug` prints `[redacted]`. Keep it (server side) between the authorize redirect and
/// the callback.
#[derive(Clone)]
pub struct StateToken(SecretString);

impl StateToken {
    /// Wraps a state value loaded back from the host's session storage.
    pub fn new(value: impl Into<String>) -> Self {
        StateToken(SecretString::from(value.into()))
    }

    /// The value, to store it in the host's session.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for StateToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateToken([redacted])")
    }
}

/// The PKCE code verifier of an authorization request (RFC 7636, S256). Secret-typed.
#[derive(Clone)]
pub struct PkceVerifier(SecretString);

impl PkceVerifier {
    /// Wraps a verifier loaded back from the host's session storage.
    pub fn new(value: impl Into<String>) -> Self {
        PkceVerifier(SecretString::from(value.into()))
    }

    /// The value, to store it in the host's session.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceVerifier([redacted])")
    }
}

/// What [`OAuthClient::authorize_url`] returns: the URL to send the user to, and the two
/// values to keep until the callback arrives. `Debug` shows the URL without its query (which
/// carries the state).
#[derive(Clone)]
#[non_exhaustive]
pub struct AuthorizeRequest {
    /// The authorization URL (contains the state and the PKCE challenge, not the verifier).
    pub url: Url,
    /// The `state` to compare with the callback's.
    pub state: StateToken,
    /// The PKCE verifier to send with the code exchange.
    pub pkce_verifier: PkceVerifier,
}

impl fmt::Debug for AuthorizeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeRequest")
            .field("url", &redact_url(self.url.as_str()))
            .field("state", &self.state)
            .field("pkce_verifier", &self.pkce_verifier)
            .finish()
    }
}

/// The query parameters of the redirect back from the authorization server.
#[derive(Clone, Deserialize)]
#[non_exhaustive]
pub struct CallbackParams {
    /// The authorization code (single use, short-lived; secret-typed).
    #[serde(deserialize_with = "de_secret")]
    pub code: SecretString,
    /// The state echoed by the server.
    pub state: String,
}

impl CallbackParams {
    /// Callback parameters from their values.
    pub fn new(code: impl Into<String>, state: impl Into<String>) -> Self {
        CallbackParams {
            code: SecretString::from(code.into()),
            state: state.into(),
        }
    }
}

impl fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackParams")
            .field("code", &"[redacted]")
            .field("state", &"[redacted]")
            .finish()
    }
}

fn de_secret<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> std::result::Result<SecretString, D::Error> {
    Ok(SecretString::from(String::deserialize(de)?))
}

/// An OAuth 2.0 client for one platform application: authorization code + PKCE, refresh,
/// client credentials and JWT bearer (RFC 7523) grants.
///
/// Token endpoint calls go through the plain `reqwest::Client` given to [`OAuthClient::new`]
/// (no auth middleware). [`OAuthClient::with_default_http`] builds one with
/// [`default_http_client`]: connect and request timeouts, no redirects (the `oauth2` crate
/// recommends against following them: SSRF). A client given to [`OAuthClient::new`] should
/// have both too, or a token endpoint that never answers holds every caller of the
/// [`super::TokenManager`] forever.
///
/// # Errors (all grant methods)
/// - `Unauthenticated`, permanent, context `action=needs re-authorization`: `invalid_grant`
///   (code or refresh token expired, revoked or reused).
/// - `Config`, permanent: `invalid_client`, `unauthorized_client`, `invalid_scope`,
///   `unsupported_grant_type`, a 401 without an OAuth error.
/// - `RateLimited` (429, with `Retry-After`), `Upstream` (5xx), `Network`: temporary.
/// - `InvalidResponse`: the answer is not a token response.
///
/// No message, context or `Debug` output contains a token, code, verifier or secret.
#[derive(Clone)]
pub struct OAuthClient {
    config: OAuthConfig,
    inner: Inner,
    transport: Transport,
    clock: Clock,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The connect timeout of [`default_http_client`]: 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The request timeout of [`default_http_client`] (the whole exchange, answer included): 30 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The `reqwest::Client` for OAuth endpoints (token, metadata): [`DEFAULT_CONNECT_TIMEOUT`],
/// [`DEFAULT_REQUEST_TIMEOUT`], and no redirects followed.
///
/// # Errors
/// `Config` when the TLS backend cannot be initialised.
pub fn default_http_client() -> Result<reqwest::Client> {
    http_client_with_timeouts(DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)
}

/// Like [`default_http_client`], with other timeouts.
///
/// # Errors
/// `Config` when the TLS backend cannot be initialised.
pub fn http_client_with_timeouts(connect: Duration, request: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(request)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("apex-connect/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::config("cannot build the OAuth HTTP client").set_source(e))
}

fn parse_url(what: &'static str, url: &str) -> Result<Url> {
    Url::parse(url).map_err(|e| {
        Error::config("invalid OAuth endpoint URL")
            .with_context("field", what)
            .with_context("url", redact_url(url))
            .set_source(e)
    })
}

impl OAuthClient {
    /// A client for `config`, sending token requests through `http`.
    ///
    /// # Errors
    /// `Config` when a URL in the configuration does not parse.
    pub fn new(config: OAuthConfig, http: reqwest::Client) -> Result<Self> {
        let token_url = TokenUrl::from_url(parse_url("token_url", &config.token_url)?);
        let auth_url = match &config.auth_url {
            Some(u) => Some(AuthUrl::from_url(parse_url("auth_url", u)?)),
            None => None,
        };
        let mut inner = oauth2::Client::new(ClientId::new(config.client_id.clone()))
            .set_auth_uri_option(auth_url)
            .set_token_uri(token_url)
            .set_auth_type(match config.client_auth {
                ClientAuth::Basic => AuthType::BasicAuth,
                ClientAuth::RequestBody => AuthType::RequestBody,
            });
        if let Some(secret) = &config.client_secret {
            inner = inner.set_client_secret(ClientSecret::new(secret.expose_secret().to_string()));
        }
        if let Some(r) = &config.redirect_url {
            inner = inner.set_redirect_uri(RedirectUrl::from_url(parse_url("redirect_url", r)?));
        }
        Ok(OAuthClient {
            config,
            inner,
            transport: Transport { http },
            clock: system_clock(),
        })
    }

    /// A client for `config` over [`default_http_client`] (timeouts, no redirects).
    ///
    /// # Errors
    /// `Config` when a URL in the configuration does not parse or the HTTP client cannot be
    /// built.
    pub fn with_default_http(config: OAuthConfig) -> Result<Self> {
        Self::new(config, default_http_client()?)
    }

    /// Replaces the clock used to turn `expires_in` into an absolute expiry (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// Builds the authorization URL with a random `state` and a PKCE S256 challenge.
    ///
    /// # Errors
    /// `Config` when the configuration has no `auth_url`.
    pub fn authorize_url(&self) -> Result<AuthorizeRequest> {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = self
            .inner
            .authorize_url(CsrfToken::new_random)
            .map_err(|e| Error::config("OAuth configuration has no auth_url").set_source(e))?
            .set_pkce_challenge(challenge)
            .add_scopes(self.config.scopes.iter().cloned().map(Scope::new));
        for (k, v) in &self.config.extra_authorize_params {
            req = req.add_extra_param(k.as_str(), v.as_str());
        }
        let (url, state) = req.url();
        Ok(AuthorizeRequest {
            url,
            state: StateToken::new(state.secret().clone()),
            pkce_verifier: PkceVerifier::new(verifier.secret().clone()),
        })
    }

    /// Exchanges the code of a callback for tokens, after checking its `state` (constant time).
    ///
    /// # Errors
    /// `InvalidInput` (no request sent) when the state does not match; see the type's errors.
    pub async fn exchange_code(
        &self,
        callback: &CallbackParams,
        expected_state: &StateToken,
        pkce_verifier: &PkceVerifier,
    ) -> Result<TokenSet> {
        let got = callback.state.as_bytes();
        let want = expected_state.expose_secret().as_bytes();
        if !bool::from(got.ct_eq(want)) {
            return Err(Error::invalid_input(
                "OAuth callback state does not match the authorization request",
            )
            .with_context("grant", "authorization_code"));
        }
        let code = callback.code.expose_secret();
        let verifier = pkce_verifier.expose_secret();
        let res = self
            .inner
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .request_async(&self.transport)
            .await;
        let resp = self.finish(res, "authorization_code", &[code, verifier])?;
        Ok(self.to_token_set(resp, None))
    }

    /// Exchanges a refresh token for a new token set. When the answer carries no refresh token
    /// the old one is kept; scopes and `instance_url` too when the answer omits them.
    ///
    /// # Errors
    /// `Unauthenticated` when `current` has no refresh token; see the type's errors.
    pub async fn refresh(&self, current: &TokenSet) -> Result<TokenSet> {
        let Some(rt) = &current.refresh_token else {
            return Err(needs_reauth("the token set has no refresh token")
                .with_context("grant", "refresh_token"));
        };
        let rt_str = rt.expose_secret();
        let refresh_token = RefreshToken::new(rt_str.to_string());
        let res = self
            .inner
            .exchange_refresh_token(&refresh_token)
            .request_async(&self.transport)
            .await;
        let resp = self.finish(res, "refresh_token", &[rt_str])?;
        Ok(self.to_token_set(resp, Some(current)))
    }

    /// The client-credentials grant. `scopes` empty: the configured scopes.
    ///
    /// # Errors
    /// See the type's errors.
    pub async fn client_credentials(&self, scopes: &[String]) -> Result<TokenSet> {
        let scopes = if scopes.is_empty() {
            &self.config.scopes
        } else {
            scopes
        };
        let res = self
            .inner
            .exchange_client_credentials()
            .add_scopes(scopes.iter().cloned().map(Scope::new))
            .request_async(&self.transport)
            .await;
        let resp = self.finish(res, "client_credentials", &[])?;
        Ok(self.to_token_set(resp, None))
    }

    /// The JWT bearer grant (RFC 7523): `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
    /// with a signed `assertion` (see [`super::JwtAssertion`]). The client authenticates too
    /// when a client secret is configured (Salesforce and Google do not need it).
    ///
    /// # Errors
    /// See the type's errors.
    pub async fn jwt_bearer(&self, assertion: &SecretString) -> Result<TokenSet> {
        let a = assertion.expose_secret();
        let mut params: Vec<(&str, &str)> =
            vec![("grant_type", JWT_BEARER_GRANT), ("assertion", a)];
        let mut builder = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.config.token_url.as_str())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
        let secret = self
            .config
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret());
        match (self.config.client_auth, secret) {
            (ClientAuth::Basic, Some(secret)) => {
                let mut v =
                    HeaderValue::from_str(&basic_auth_value(&self.config.client_id, secret))
                        .map_err(|_| Error::config("client credentials do not fit in a header"))?;
                v.set_sensitive(true);
                builder = builder.header(AUTHORIZATION, v);
            }
            (ClientAuth::RequestBody, Some(secret)) => {
                params.push(("client_id", &self.config.client_id));
                params.push(("client_secret", secret));
            }
            (_, None) => {}
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish()
            .into_bytes();
        let request = builder.body(body).map_err(|e| {
            Error::config("invalid token request")
                .with_context("grant", "jwt_bearer")
                .set_source(e)
        })?;
        let res: std::result::Result<
            PlatformTokenResponse,
            RequestTokenError<TransportError, BasicErrorResponse>,
        > = match self.transport.call(request).await {
            Ok(response) => serde_path_to_json(response.body()),
            Err(e) => Err(RequestTokenError::Request(e)),
        };
        let resp = self.finish(res, "jwt_bearer", &[a])?;
        Ok(self.to_token_set(resp, None))
    }

    fn finish(
        &self,
        res: std::result::Result<
            PlatformTokenResponse,
            RequestTokenError<TransportError, BasicErrorResponse>,
        >,
        grant: &'static str,
        sent_secrets: &[&str],
    ) -> Result<PlatformTokenResponse> {
        let mut secrets: Vec<&str> = sent_secrets.to_vec();
        if let Some(s) = &self.config.client_secret {
            secrets.push(s.expose_secret());
        }
        res.map_err(|e| map_request_error(e, &secrets).with_context("grant", grant))
    }

    fn to_token_set(&self, resp: PlatformTokenResponse, previous: Option<&TokenSet>) -> TokenSet {
        let now = (self.clock)();
        token_set_from_response(&resp, now, previous)
    }
}

fn serde_path_to_json(
    body: &[u8],
) -> std::result::Result<PlatformTokenResponse, RequestTokenError<TransportError, BasicErrorResponse>>
{
    serde_json::from_slice::<PlatformTokenResponse>(body).map_err(|e| {
        RequestTokenError::Other(format!(
            "token response is not the JSON expected (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// `base64(urlencode(id) ":" urlencode(secret))` as RFC 6749 §2.3.1 asks.
fn basic_auth_value(id: &str, secret: &str) -> String {
    let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let secret: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
}

fn token_set_from_response(
    resp: &PlatformTokenResponse,
    now: SystemTime,
    previous: Option<&TokenSet>,
) -> TokenSet {
    let now_ms = unix_ms(now);
    let latest = now_ms.saturating_add(duration_ms(MAX_TOKEN_LIFETIME));
    let expires_at_ms = match resp.expires_in() {
        Some(d) => Some(now_ms.saturating_add(duration_ms(d))),
        // An absolute expiry already past is a unit mix-up, not a token to refresh on every
        // call: treat it as unknown (refresh after a 401).
        None => resp
            .expires_at
            .as_ref()
            .and_then(timestamp_ms)
            .filter(|&at| at > now_ms)
            .map(|at| at.min(latest)),
    };
    // The server's issue time when it says (never later than now), else now.
    let issued_at_ms = resp
        .issued_at
        .as_ref()
        .and_then(timestamp_ms)
        .map_or(now_ms, |at| at.min(now_ms));
    let refresh_token = resp
        .refresh_token()
        .map(|r| SecretString::from(r.secret().clone()))
        .or_else(|| previous.and_then(|p| p.refresh_token.clone()));
    let scopes = match resp.scopes() {
        Some(s) => s.iter().map(|s| s.to_string()).collect(),
        None => previous.map(|p| p.scopes.clone()).unwrap_or_default(),
    };
    let instance_url = resp
        .instance_url
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .or_else(|| previous.and_then(|p| p.instance_url.clone()));
    let mut t = TokenSet::bearer(resp.access_token().secret().clone());
    t.refresh_token = refresh_token;
    t.expires_at_ms = expires_at_ms;
    t.issued_at_ms = Some(issued_at_ms);
    t.scopes = scopes;
    t.instance_url = instance_url;
    t.identity = crate::token_identity::TokenIdentity::from_answer(
        resp.id.as_ref(),
        resp.issued_at.as_ref(),
        resp.signature.as_ref(),
    );
    t
}

fn needs_reauth(message: &'static str) -> Error {
    Error::new(ErrorKind::Unauthenticated, message)
        .permanent()
        .with_context("action", "needs re-authorization")
}

/// Replaces any occurrence of a secret we sent with `[redacted]` (servers sometimes echo them).
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut s: String = text.chars().take(300).collect();
    for secret in secrets {
        if secret.len() >= 4 && s.contains(secret) {
            s = s.replace(secret, "[redacted]");
        }
    }
    s
}

fn map_request_error(
    e: RequestTokenError<TransportError, BasicErrorResponse>,
    secrets: &[&str],
) -> Error {
    match e {
        RequestTokenError::Request(TransportError::Network(err)) => {
            let message = if err.is_timeout() {
                "token endpoint timed out"
            } else {
                "token endpoint unreachable"
            };
            Error::new(ErrorKind::Network, message)
                .temporary()
                .set_source(err)
        }
        RequestTokenError::Request(TransportError::TooLarge) => {
            Error::invalid_response("token endpoint answer is too large")
                .with_context("limit_bytes", MAX_TOKEN_RESPONSE_BYTES)
        }
        RequestTokenError::Request(TransportError::Status {
            status,
            retry_after,
            oauth_error,
            description,
        }) => map_status(status, retry_after, oauth_error, description, secrets),
        RequestTokenError::ServerResponse(err) => map_status(
            StatusCode::BAD_REQUEST,
            None,
            Some(err.error().as_ref().to_string()),
            err.error_description().cloned(),
            secrets,
        ),
        // The body may hold a token: keep only where parsing failed, never the bytes.
        RequestTokenError::Parse(err, _body) => {
            Error::invalid_response("token response is not the JSON expected")
                .with_context("path", err.path().to_string())
        }
        RequestTokenError::Other(msg) => Error::invalid_response(scrub(&msg, secrets)),
    }
}

fn map_status(
    status: StatusCode,
    retry_after: Option<Duration>,
    oauth_error: Option<String>,
    description: Option<String>,
    secrets: &[&str],
) -> Error {
    let code = oauth_error.as_deref().unwrap_or("");
    let mut e = match code {
        "invalid_grant" => needs_reauth("the grant is invalid, expired or revoked"),
        "invalid_client" | "unauthorized_client" => {
            Error::config("the token endpoint rejected the client credentials").permanent()
        }
        "invalid_scope" | "unsupported_grant_type" => {
            Error::config("the token endpoint rejected the grant configuration").permanent()
        }
        "invalid_request" => Error::invalid_input("the token endpoint rejected the request"),
        _ if status == StatusCode::TOO_MANY_REQUESTS => {
            let e = Error::new(ErrorKind::RateLimited, "token endpoint rate limited").temporary();
            match retry_after {
                Some(d) => e.with_retry_after(d),
                None => e,
            }
        }
        _ if status.is_server_error() => {
            Error::new(ErrorKind::Upstream, "token endpoint failed").temporary()
        }
        _ if status == StatusCode::UNAUTHORIZED => {
            Error::config("the token endpoint rejected the client credentials").permanent()
        }
        _ => Error::new(ErrorKind::Upstream, "token endpoint answered an error").permanent(),
    };
    e = e.with_context("status", status.as_u16());
    if !code.is_empty() {
        e = e.with_context("oauth_error", scrub(code, secrets));
    }
    if let Some(d) = description {
        e = e.with_context("description", scrub(&d, secrets));
    }
    e
}

/// The `oauth2` HTTP client: our `reqwest::Client`, answering every non-200 status as an
/// error that keeps the status, `Retry-After` and the OAuth error code (never the body).
#[derive(Clone)]
struct Transport {
    http: reqwest::Client,
}

/// The largest token-endpoint answer read (token answers are a few hundred bytes).
const MAX_TOKEN_RESPONSE_BYTES: usize = 256 * 1024;

/// The body of `response`, refusing more than [`MAX_TOKEN_RESPONSE_BYTES`].
async fn read_capped(
    mut response: reqwest::Response,
) -> std::result::Result<Vec<u8>, TransportError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_TOKEN_RESPONSE_BYTES as u64)
    {
        return Err(TransportError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| TransportError::Network(e.without_url()))?
    {
        if body.len().saturating_add(chunk.len()) > MAX_TOKEN_RESPONSE_BYTES {
            return Err(TransportError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("token endpoint unreachable")]
    Network(#[source] reqwest::Error),
    #[error("token endpoint answer is too large")]
    TooLarge,
    #[error("token endpoint answered HTTP {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        oauth_error: Option<String>,
        description: Option<String>,
    },
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

impl<'c> AsyncHttpClient<'c> for Transport {
    type Error = TransportError;
    type Future = Pin<
        Box<dyn Future<Output = std::result::Result<HttpResponse, TransportError>> + Send + 'c>,
    >;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| TransportError::Network(e.without_url()))?;
            let response = self
                .http
                .execute(request)
                .await
                .map_err(|e| TransportError::Network(e.without_url()))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = read_capped(response).await?;
            if status != StatusCode::OK {
                let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
                let retry_after = headers
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let (oauth_error, description) = match parsed {
                    Some(b) => (b.error, b.error_description),
                    None => (None, None),
                };
                return Err(TransportError::Status {
                    status,
                    retry_after,
                    oauth_error,
                    description,
                });
            }
            let mut out = http::Response::builder()
                .status(status)
                .body(body)
                .map_err(|_| TransportError::Status {
                    status,
                    retry_after: None,
                    oauth_error: None,
                    description: None,
                })?;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_at_seconds_or_millis() {
        let s = serde_json::json!(1_700_000_000);
        assert_eq!(timestamp_ms(&s), Some(1_700_000_000_000));
        let ms = serde_json::json!(1_700_000_000_123_i64);
        assert_eq!(timestamp_ms(&ms), Some(1_700_000_000_123));
        let st = serde_json::json!("1700000000");
        assert_eq!(timestamp_ms(&st), Some(1_700_000_000_000));
        assert_eq!(timestamp_ms(&serde_json::json!("soon")), None);
        assert_eq!(timestamp_ms(&serde_json::json!(-5)), None);
    }

    #[test]
    fn token_answers_of_each_platform() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_000_000);
        let std: PlatformTokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"bearer","expires_in":1800,"refresh_token":"r"}"#,
        )
        .unwrap();
        let t = token_set_from_response(&std, now, None);
        assert_eq!(t.expires_at_ms, Some(1_699_000_000_000 + 1_800_000));
        assert_eq!(t.issued_at_ms, Some(1_699_000_000_000));
        assert!(t.refresh_token.is_some());
        let front: PlatformTokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"Bearer","expires_at":1700000000123}"#,
        )
        .unwrap();
        let prev = TokenSet::bearer("old").with_refresh_token("keep-me");
        let t = token_set_from_response(&front, now, Some(&prev));
        assert_eq!(t.expires_at_ms, Some(1_700_000_000_123));
        assert_eq!(
            t.refresh_token
                .as_ref()
                .map(|r| r.expose_secret().to_string()),
            Some("keep-me".into())
        );
        let sf: PlatformTokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"Bearer","instance_url":"https://na1.example.com",
                "issued_at":"1726235737296","id":"https://login/id/x/y","signature":"zz"}"#,
        )
        .unwrap();
        let t = token_set_from_response(&sf, now, None);
        assert_eq!(t.expires_at_ms, None);
        assert_eq!(t.instance_url.as_deref(), Some("https://na1.example.com"));
        let identity = t.identity.expect("identity fields kept");
        assert_eq!(identity.id, "https://login/id/x/y");
        assert_eq!(identity.issued_at, "1726235737296");
        assert_eq!(identity.signature.as_deref(), Some("zz"));
    }

    /// The expiry computed from a token answer with these extra JSON fields, at `NOW_MS`.
    fn expiry_of(fields: &str) -> (Option<i64>, Option<i64>) {
        let body = format!(r#"{{"access_token":"a","token_type":"bearer"{fields}}}"#);
        let resp: PlatformTokenResponse =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(NOW_MS as u64);
        let t = token_set_from_response(&resp, now, None);
        (t.expires_at_ms, t.issued_at_ms)
    }

    const NOW_MS: i64 = 1_700_000_000_000;

    #[test]
    fn token_answer_numbers_at_the_extremes_never_overflow() {
        let max = NOW_MS + duration_ms(MAX_TOKEN_LIFETIME);
        let cases: &[(&str, Option<i64>)] = &[
            (r#","expires_in":3600"#, Some(NOW_MS + 3_600_000)),
            (r#","expires_in":"3600""#, Some(NOW_MS + 3_600_000)),
            (r#","expires_in":" 3600 ""#, Some(NOW_MS + 3_600_000)),
            (r#","expires_in":3600.5"#, Some(NOW_MS + 3_600_500)),
            (r#","expires_in":3.6e3"#, Some(NOW_MS + 3_600_000)),
            (r#","expires_in":"3.6E3""#, Some(NOW_MS + 3_600_000)),
            (r#","expires_in":0"#, None),
            (r#","expires_in":"0""#, None),
            (r#","expires_in":-1"#, None),
            (r#","expires_in":-9223372036854775808"#, None),
            (r#","expires_in":18446744073709551615"#, Some(max)),
            (r#","expires_in":9223372036854775807"#, Some(max)),
            (r#","expires_in":2e17"#, Some(max)),
            (r#","expires_in":200000000000000000"#, Some(max)),
            (r#","expires_in":1e308"#, Some(max)),
            (r#","expires_in":"1e400""#, None),
            (r#","expires_in":"NaN""#, None),
            (r#","expires_in":"inf""#, None),
            (r#","expires_in":"soon""#, None),
            (r#","expires_in":null"#, None),
            (r#","expires_in":true"#, None),
            (r#","expires_in":[1]"#, None),
            (r#","expires_in":{"s":1}"#, None),
            // Absolute expiry: seconds or milliseconds by magnitude; past ones are unknown.
            (r#","expires_at":1700003600"#, Some(NOW_MS + 3_600_000)),
            (r#","expires_at":"1700003600""#, Some(NOW_MS + 3_600_000)),
            (r#","expires_at":1700003600123"#, Some(NOW_MS + 3_600_123)),
            (r#","expires_at":1.7000036e9"#, Some(NOW_MS + 3_600_000)),
            (r#","expires_at":1699999999"#, None),
            (r#","expires_at":0"#, None),
            (r#","expires_at":-1700003600"#, None),
            (r#","expires_at":9223372036854775807"#, Some(max)),
            (r#","expires_at":18446744073709551615"#, Some(max)),
            (r#","expires_at":-9223372036854775808"#, None),
            (r#","expires_at":1e308"#, Some(max)),
            (r#","expires_at":"x""#, None),
            // expires_in wins over expires_at; an unusable expires_in falls back to it.
            (
                r#","expires_in":60,"expires_at":1700003600"#,
                Some(NOW_MS + 60_000),
            ),
            (
                r#","expires_in":-5,"expires_at":1700003600"#,
                Some(NOW_MS + 3_600_000),
            ),
        ];
        for (fields, expected) in cases {
            assert_eq!(expiry_of(fields).0, *expected, "{fields}");
        }
    }

    #[test]
    fn issued_at_in_seconds_or_millis_never_after_now() {
        let cases: &[(&str, i64)] = &[
            (r#","issued_at":"1699999000000""#, NOW_MS - 1_000_000),
            (r#","issued_at":1699999000"#, NOW_MS - 1_000_000),
            (r#","issued_at":1699999000.5"#, NOW_MS - 999_500),
            (r#","issued_at":1800000000000"#, NOW_MS),
            (r#","issued_at":9223372036854775807"#, NOW_MS),
            (r#","issued_at":18446744073709551615"#, NOW_MS),
            (r#","issued_at":-1"#, NOW_MS),
            (r#","issued_at":0"#, NOW_MS),
            (r#","issued_at":"later""#, NOW_MS),
            (r#","issued_at":1e999"#, NOW_MS),
            ("", NOW_MS),
        ];
        for (fields, expected) in cases {
            // serde_json refuses 1e999 as a number; only check what parses.
            let body = format!(r#"{{"access_token":"a"{fields}}}"#);
            if serde_json::from_str::<PlatformTokenResponse>(&body).is_err() {
                assert!(fields.contains("1e999"), "{fields}");
                continue;
            }
            assert_eq!(expiry_of(fields).1, Some(*expected), "{fields}");
        }
    }

    #[test]
    fn lenient_token_type_scope_and_platform_fields() {
        for body in [
            r#"{"access_token":"a"}"#,
            r#"{"access_token":"a","token_type":null}"#,
            r#"{"access_token":"a","token_type":"BEARER"}"#,
        ] {
            let r: PlatformTokenResponse = serde_json::from_str(body).unwrap();
            assert_eq!(r.token_type(), &BasicTokenType::Bearer, "{body}");
        }
        let r: PlatformTokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"N_A","scope":["a","b"],"instance_url":42}"#,
        )
        .unwrap();
        assert_eq!(r.token_type(), &BasicTokenType::Extension("N_A".into()));
        assert_eq!(r.scopes().map(Vec::len), Some(2));
        let t = token_set_from_response(&r, SystemTime::now(), None);
        assert_eq!(t.instance_url, None);
        let r: PlatformTokenResponse =
            serde_json::from_str(r#"{"access_token":"a","scope":"x  y z"}"#).unwrap();
        assert_eq!(r.scopes().map(Vec::len), Some(3));
        assert!(
            serde_json::from_str::<PlatformTokenResponse>(r#"{"token_type":"bearer"}"#).is_err()
        );
        // Debug never shows the tokens.
        let r: PlatformTokenResponse =
            serde_json::from_str(r#"{"access_token":"sekrit-a","refresh_token":"sekrit-r"}"#)
                .unwrap();
        assert!(!format!("{r:?}").contains("sekrit"));
    }

    #[tokio::test]
    async fn token_requests_time_out_and_redirects_are_not_followed() {
        use wiremock::matchers::path;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        Mock::given(path("/slow"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"access_token": "late"}))
                    .set_delay(Duration::from_secs(3)),
            )
            .mount(&server)
            .await;
        Mock::given(path("/moved"))
            .respond_with(
                ResponseTemplate::new(307)
                    .insert_header("location", format!("{}/elsewhere", server.uri())),
            )
            .mount(&server)
            .await;
        Mock::given(path("/elsewhere"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token": "x"})),
            )
            .expect(0)
            .mount(&server)
            .await;
        let http =
            http_client_with_timeouts(Duration::from_secs(1), Duration::from_millis(100)).unwrap();
        let slow = OAuthClient::new(
            OAuthConfig::new("id", format!("{}/slow", server.uri())),
            http,
        )
        .unwrap();
        let e = slow.client_credentials(&[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Network, "{e}");
        assert!(e.is_temporary());
        assert_eq!(e.message(), "token endpoint timed out");
        let moved = OAuthClient::with_default_http(OAuthConfig::new(
            "id",
            format!("{}/moved", server.uri()),
        ))
        .unwrap();
        let e = moved.client_credentials(&[]).await.unwrap_err();
        assert_eq!(e.context_value("status"), Some("307"), "{e}");
    }

    #[tokio::test]
    async fn oversized_token_answers_are_refused() {
        use wiremock::matchers::path;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        let big = format!(
            r#"{{"access_token":"a","pad":"{}"}}"#,
            "x".repeat(MAX_TOKEN_RESPONSE_BYTES)
        );
        Mock::given(path("/token"))
            .respond_with(ResponseTemplate::new(200).set_body_string(big))
            .mount(&server)
            .await;
        let c = OAuthClient::with_default_http(OAuthConfig::new(
            "id",
            format!("{}/token", server.uri()),
        ))
        .unwrap();
        let e = c.client_credentials(&[]).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    }

    #[test]
    fn error_mapping() {
        let e = map_status(
            StatusCode::BAD_REQUEST,
            None,
            Some("invalid_grant".into()),
            Some("refresh token rt-secret-1 is revoked".into()),
            &["rt-secret-1"],
        );
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(!e.is_temporary());
        assert_eq!(e.context_value("action"), Some("needs re-authorization"));
        assert!(!e.to_string().contains("rt-secret-1"), "{e}");
        let e = map_status(
            StatusCode::UNAUTHORIZED,
            None,
            Some("invalid_client".into()),
            None,
            &[],
        );
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!e.is_temporary());
        let e = map_status(StatusCode::BAD_GATEWAY, None, None, None, &[]);
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.is_temporary());
        let e = map_status(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            None,
            None,
            &[],
        );
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn basic_auth_urlencodes_id_and_secret() {
        let v = basic_auth_value("id:+% x", "se:cr+et% y");
        let expected = format!("Basic {}", BASE64.encode("id%3A%2B%25+x:se%3Acr%2Bet%25+y"));
        assert_eq!(v, expected);
    }
}
