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
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use url::Url;

use super::config::{ClientAuth, OAuthConfig};
use super::{Clock, system_clock};
use crate::error::{Error, ErrorKind, Result, redact_url};
use crate::token::TokenSet;
use crate::webhook::unix_ms;

/// The grant type URI of RFC 7523 (JWT bearer assertion).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Fields some platforms add to the token answer (kept by `oauth2` as extra token fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PlatformFields {
    /// Front: absolute expiry, seconds or milliseconds (decided by magnitude).
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
    /// Salesforce: the API host of the org.
    #[serde(default)]
    instance_url: Option<String>,
    /// Salesforce: when the token was issued (ms in practice); informative only.
    #[serde(default)]
    issued_at: Option<serde_json::Value>,
    /// Salesforce: the identity URL (signed together with `issued_at`).
    #[serde(default)]
    id: Option<serde_json::Value>,
    /// Salesforce: Base64 HMAC-SHA256 of `id` + `issued_at`, keyed with the client secret.
    #[serde(default)]
    signature: Option<serde_json::Value>,
}

impl ExtraTokenFields for PlatformFields {}

type PlatformTokenResponse = StandardTokenResponse<PlatformFields, BasicTokenType>;

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
/// (no auth middleware). Give it a client that does not follow redirects
/// (`redirect::Policy::none()`), as the `oauth2` crate recommends against SSRF.
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
    let extra = resp.extra_fields();
    let expires_at_ms = match resp.expires_in() {
        Some(d) => Some(unix_ms(now + d)),
        None => extra.expires_at.as_ref().and_then(expires_at_to_ms),
    };
    let refresh_token = resp
        .refresh_token()
        .map(|r| SecretString::from(r.secret().clone()))
        .or_else(|| previous.and_then(|p| p.refresh_token.clone()));
    let scopes = match resp.scopes() {
        Some(s) => s.iter().map(|s| s.to_string()).collect(),
        None => previous.map(|p| p.scopes.clone()).unwrap_or_default(),
    };
    let instance_url = extra
        .instance_url
        .clone()
        .or_else(|| previous.and_then(|p| p.instance_url.clone()));
    let mut t = TokenSet::bearer(resp.access_token().secret().clone());
    t.refresh_token = refresh_token;
    t.expires_at_ms = expires_at_ms;
    t.scopes = scopes;
    t.instance_url = instance_url;
    t.identity = crate::token_identity::TokenIdentity::from_answer(
        extra.id.as_ref(),
        extra.issued_at.as_ref(),
        extra.signature.as_ref(),
    );
    t
}

/// Front's `expires_at`: a number or numeric string, in seconds or milliseconds. Values at or
/// above 10^11 are milliseconds (10^11 s is the year 5138; 10^11 ms is 1973).
fn expires_at_to_ms(v: &serde_json::Value) -> Option<i64> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !n.is_finite() || n <= 0.0 {
        return None;
    }
    Some(if n >= 1e11 {
        n as i64
    } else {
        (n * 1000.0) as i64
    })
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
            Error::new(ErrorKind::Network, "token endpoint unreachable")
                .temporary()
                .set_source(err)
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

#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("token endpoint unreachable")]
    Network(#[source] reqwest::Error),
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
            let body = response
                .bytes()
                .await
                .map_err(|e| TransportError::Network(e.without_url()))?;
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
                .body(body.to_vec())
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
        assert_eq!(expires_at_to_ms(&s), Some(1_700_000_000_000));
        let ms = serde_json::json!(1_700_000_000_123_i64);
        assert_eq!(expires_at_to_ms(&ms), Some(1_700_000_000_123));
        let st = serde_json::json!("1700000000");
        assert_eq!(expires_at_to_ms(&st), Some(1_700_000_000_000));
        assert_eq!(expires_at_to_ms(&serde_json::json!("soon")), None);
        assert_eq!(expires_at_to_ms(&serde_json::json!(-5)), None);
    }

    #[test]
    fn token_answers_of_each_platform() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let std: PlatformTokenResponse = serde_json::from_str(
            r#"{"access_token":"a","token_type":"bearer","expires_in":1800,"refresh_token":"r"}"#,
        )
        .unwrap();
        let t = token_set_from_response(&std, now, None);
        assert_eq!(t.expires_at_ms, Some(1_000_000_000 + 1_800_000));
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
