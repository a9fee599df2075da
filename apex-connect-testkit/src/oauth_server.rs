//! A loopback OAuth 2.0 authorization server for tests and simulators.
//!
//! `GET /authorize` (simulated consent: answers `302` to `redirect_uri?code=..&state=..`) and
//! `POST /token` with the grants `authorization_code` (+ PKCE S256), `refresh_token` (rotation
//! on or off, reuse detection), `client_credentials` and RFC 7523 `jwt-bearer`. Client
//! authentication by HTTP Basic (decoded as RFC 6749 §2.3.1 asks: base64, then form-URL-decode
//! each part) or in the body. Counters per grant make "exactly one refresh" assertions easy.
//!
//! Platform simulators mount [`OAuthServer::router`] under their own paths (Front:
//! `Router::new().nest("/oauth", oauth.router())`) and use
//! [`OAuthServer::validate_access_token`] to answer 401 for expired or revoked tokens.
//!
//! ```no_run
//! # async fn demo() -> apex_connect_core::Result<()> {
//! use apex_connect_testkit::oauth_server::{OAuthServer, OAuthServerConfig};
//! let server = OAuthServer::new(OAuthServerConfig::new("client", "secret"));
//! let handle = server.spawn().await?;
//! let token_url = format!("{}/token", handle.base_url());
//! # let _ = token_url; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_core::oauth::{Clock, JWT_BEARER_GRANT, system_clock};
use apex_connect_core::{Result, TokenSet};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::sim::{SimHandle, SimServer};

/// How the token answer states the access token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ExpiryStyle {
    /// `expires_in` (seconds), as RFC 6749 and HubSpot.
    #[default]
    ExpiresIn,
    /// Front-style `expires_at` in Unix seconds, without `expires_in`.
    ExpiresAtSeconds,
    /// Front-style `expires_at` in Unix milliseconds, without `expires_in`.
    ExpiresAtMillis,
    /// No lifetime at all (Salesforce): the client learns of expiry from a 401.
    None,
}

/// The settings of an [`OAuthServer`].
#[derive(Clone)]
#[non_exhaustive]
pub struct OAuthServerConfig {
    /// The registered client id.
    pub client_id: String,
    /// The registered client secret; `None`: a public client (no client authentication).
    pub client_secret: Option<String>,
    /// Redirect URIs allowed on `/authorize` (empty: any).
    pub redirect_uris: Vec<String>,
    /// Access-token lifetime (also enforced by [`OAuthServer::validate_access_token`]);
    /// `None`: tokens never expire.
    pub access_ttl: Option<Duration>,
    /// How the lifetime is stated in answers.
    pub expiry_style: ExpiryStyle,
    /// Whether each refresh issues a new refresh token (and invalidates the old one).
    pub rotate_refresh_tokens: bool,
    /// `instance_url` to add to answers (Salesforce); also adds `issued_at` (ms, as a string).
    pub instance_url: Option<String>,
    /// When set, JWT-bearer assertions must be RS256-signed by this key (PEM public key).
    pub jwt_public_key_pem: Option<Vec<u8>>,
    /// Artificial latency of each `/token` answer.
    pub latency: Duration,
    /// The server's clock (token expiry and assertion `exp` checks).
    pub clock: Clock,
}

impl OAuthServerConfig {
    /// A confidential client with a 1 h access-token TTL, `expires_in`, rotation off.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        OAuthServerConfig {
            client_id: client_id.into(),
            client_secret: Some(client_secret.into()),
            redirect_uris: Vec::new(),
            access_ttl: Some(Duration::from_secs(3600)),
            expiry_style: ExpiryStyle::ExpiresIn,
            rotate_refresh_tokens: false,
            instance_url: None,
            jwt_public_key_pem: None,
            latency: Duration::ZERO,
            clock: system_clock(),
        }
    }

    /// A public client (no secret; PKCE protects the code).
    pub fn public(client_id: impl Into<String>) -> Self {
        let mut c = Self::new(client_id, "");
        c.client_secret = None;
        c
    }

    /// Allows a redirect URI (once any is set, only those are allowed).
    pub fn with_redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    /// Sets the access-token TTL (`None`: never expires).
    pub fn with_access_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.access_ttl = ttl;
        self
    }

    /// Sets how the lifetime is stated.
    pub fn with_expiry_style(mut self, style: ExpiryStyle) -> Self {
        self.expiry_style = style;
        self
    }

    /// Turns refresh-token rotation on or off.
    pub fn with_rotation(mut self, rotate: bool) -> Self {
        self.rotate_refresh_tokens = rotate;
        self
    }

    /// Adds `instance_url` (and `issued_at`) to answers.
    pub fn with_instance_url(mut self, url: impl Into<String>) -> Self {
        self.instance_url = Some(url.into());
        self
    }

    /// Requires JWT-bearer assertions signed by this RSA public key (PEM).
    pub fn with_jwt_public_key(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.jwt_public_key_pem = Some(pem.into());
        self
    }

    /// Delays every `/token` answer.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Replaces the server's clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}

impl fmt::Debug for OAuthServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthServerConfig")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("redirect_uris", &self.redirect_uris)
            .field("access_ttl", &self.access_ttl)
            .field("expiry_style", &self.expiry_style)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("instance_url", &self.instance_url)
            .field("latency", &self.latency)
            .finish_non_exhaustive()
    }
}

/// Request counters of an [`OAuthServer`] (shared, lock-free).
#[derive(Debug, Default)]
pub struct OAuthCounters {
    authorize: AtomicU64,
    token_requests: AtomicU64,
    authorization_code: AtomicU64,
    refresh_token: AtomicU64,
    client_credentials: AtomicU64,
    jwt_bearer: AtomicU64,
    reuse_detected: AtomicU64,
    errors: AtomicU64,
}

/// A snapshot of [`OAuthCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuthStats {
    /// `GET /authorize` requests.
    pub authorize: u64,
    /// All `POST /token` requests, whatever their outcome.
    pub token_requests: u64,
    /// `/token` requests with `grant_type=authorization_code`.
    pub authorization_code: u64,
    /// `/token` requests with `grant_type=refresh_token`.
    pub refresh_token: u64,
    /// `/token` requests with `grant_type=client_credentials`.
    pub client_credentials: u64,
    /// `/token` requests with the JWT-bearer grant type.
    pub jwt_bearer: u64,
    /// Refresh tokens presented again after they were rotated (each revoked the grant).
    pub reuse_detected: u64,
    /// `/token` requests answered with an error.
    pub errors: u64,
}

impl OAuthCounters {
    /// The current values.
    pub fn snapshot(&self) -> OAuthStats {
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        OAuthStats {
            authorize: l(&self.authorize),
            token_requests: l(&self.token_requests),
            authorization_code: l(&self.authorization_code),
            refresh_token: l(&self.refresh_token),
            client_credentials: l(&self.client_credentials),
            jwt_bearer: l(&self.jwt_bearer),
            reuse_detected: l(&self.reuse_detected),
            errors: l(&self.errors),
        }
    }
}

struct PendingCode {
    redirect_uri: String,
    challenge: Option<String>,
    scope: Option<String>,
}

struct Grant {
    revoked: bool,
    scope: Option<String>,
}

struct RefreshEntry {
    grant: u64,
    used: bool,
}

struct AccessEntry {
    grant: u64,
    expires_at: Option<SystemTime>,
}

#[derive(Default)]
struct Db {
    codes: HashMap<String, PendingCode>,
    grants: HashMap<u64, Grant>,
    refresh: HashMap<String, RefreshEntry>,
    access: HashMap<String, AccessEntry>,
    latest_refresh: Option<String>,
    next_grant: u64,
}

struct Inner {
    config: OAuthServerConfig,
    db: Mutex<Db>,
    counters: Arc<OAuthCounters>,
}

/// The OAuth 2.0 server. Cheap to clone (shared state).
#[derive(Clone)]
pub struct OAuthServer {
    inner: Arc<Inner>,
}

impl fmt::Debug for OAuthServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthServer")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

fn random_token(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// An OAuth error answer.
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: &'static str,
    basic_challenge: bool,
}

fn oauth_error(status: StatusCode, code: &'static str, description: &'static str) -> OAuthError {
    OAuthError {
        status,
        code,
        description,
        basic_challenge: false,
    }
}

fn invalid_grant(description: &'static str) -> OAuthError {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "error_description": self.description});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.basic_challenge {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"oauth\""),
            );
        }
        resp
    }
}

/// Decodes `Authorization: Basic` client credentials as RFC 6749 §2.3.1 asks: base64, split at
/// the first `:`, then form-URL-decode each part (`+` is a space, `%XX` a byte).
pub fn decode_basic_client_auth(value: &str) -> Option<(String, String)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (id, secret) = raw.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(s: &str) -> Option<String> {
    let bytes = s.replace('+', " ");
    let decoded: Vec<u8> = percent_decode(bytes.as_bytes())?;
    String::from_utf8(decoded).ok()
}

fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(out)
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl OAuthServer {
    /// A server with `config`.
    pub fn new(config: OAuthServerConfig) -> Self {
        OAuthServer {
            inner: Arc::new(Inner {
                config,
                db: Mutex::new(Db::default()),
                counters: Arc::new(OAuthCounters::default()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthServerConfig {
        &self.inner.config
    }

    /// `GET /authorize` and `POST /token`, to serve alone or nest under a simulator's paths.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(self.clone())
    }

    /// Serves [`OAuthServer::router`] on `127.0.0.1:0`; `/authorize` and `/token` are under the
    /// handle's base URL.
    ///
    /// # Errors
    /// `Config` when no loopback port can be bound.
    pub async fn spawn(&self) -> Result<SimHandle> {
        SimServer::start(self.router()).await
    }

    /// The shared counters.
    pub fn counters(&self) -> Arc<OAuthCounters> {
        self.inner.counters.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> OAuthStats {
        self.inner.counters.snapshot()
    }

    /// Whether `token` is a live access token (issued here, not expired, grant not revoked).
    /// Accepts the bare token or a full `Bearer <token>` header value.
    pub fn validate_access_token(&self, token: &str) -> bool {
        let token = token
            .strip_prefix("Bearer ")
            .or_else(|| token.strip_prefix("bearer "))
            .unwrap_or(token);
        let now = (self.inner.config.clock)();
        let db = self.db();
        match db.access.get(token) {
            Some(entry) => {
                let live = entry.expires_at.is_none_or(|at| now < at);
                let granted = db.grants.get(&entry.grant).is_some_and(|g| !g.revoked);
                live && granted
            }
            None => false,
        }
    }

    /// Revokes every grant: all refresh and access tokens stop working (`invalid_grant`).
    pub fn revoke_all(&self) {
        let mut db = self.db();
        for g in db.grants.values_mut() {
            g.revoked = true;
        }
        db.access.clear();
    }

    /// Expires every access token now, keeping the grants (the next API call gets 401).
    pub fn expire_access_tokens(&self) {
        let now = (self.inner.config.clock)();
        for entry in self.db().access.values_mut() {
            entry.expires_at = Some(now);
        }
    }

    /// The refresh token issued last (to check what a client stored).
    pub fn latest_refresh_token(&self) -> Option<String> {
        self.db().latest_refresh.clone()
    }

    /// Creates a grant directly (as if the user had consented and the code been exchanged) and
    /// returns its tokens as the client would store them.
    pub fn issue_token_set(&self, scope: Option<&str>) -> TokenSet {
        let mut db = self.db();
        let grant = new_grant(&mut db, scope.map(str::to_string));
        let body = self.issue(&mut db, grant, true);
        drop(db);
        token_set_from_body(&body, (self.inner.config.clock)())
    }

    fn db(&self) -> MutexGuard<'_, Db> {
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues an access token (and a refresh token if asked) for `grant`; the answer body.
    fn issue(&self, db: &mut Db, grant: u64, with_refresh: bool) -> Value {
        let cfg = &self.inner.config;
        let now = (cfg.clock)();
        let access = random_token("at");
        let expires_at = cfg.access_ttl.map(|ttl| now + ttl);
        db.access
            .insert(access.clone(), AccessEntry { grant, expires_at });
        let mut body = json!({"access_token": access, "token_type": "Bearer"});
        if with_refresh {
            let rt = random_token("rt");
            db.refresh
                .insert(rt.clone(), RefreshEntry { grant, used: false });
            db.latest_refresh = Some(rt.clone());
            body["refresh_token"] = json!(rt);
        }
        if let Some(scope) = db.grants.get(&grant).and_then(|g| g.scope.clone()) {
            body["scope"] = json!(scope);
        }
        match (cfg.expiry_style, cfg.access_ttl, expires_at) {
            (ExpiryStyle::ExpiresIn, Some(ttl), _) => body["expires_in"] = json!(ttl.as_secs()),
            (ExpiryStyle::ExpiresAtSeconds, _, Some(at)) => {
                body["expires_at"] = json!(unix_secs(at))
            }
            (ExpiryStyle::ExpiresAtMillis, _, Some(at)) => {
                body["expires_at"] = json!(unix_millis(at))
            }
            _ => {}
        }
        if let Some(url) = &cfg.instance_url {
            body["instance_url"] = json!(url);
            body["issued_at"] = json!(unix_millis(now).to_string());
        }
        body
    }

    /// Checks client authentication. `required`: the grant needs an authenticated client.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
        required: bool,
    ) -> std::result::Result<(), OAuthError> {
        let cfg = &self.inner.config;
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| decode_basic_client_auth(v).ok_or(()));
        let body_id = form.get("client_id");
        let body_secret = form.get("client_secret");
        let (id, secret, used_basic) = match basic {
            Some(Err(())) => {
                return Err(OAuthError {
                    basic_challenge: true,
                    ..oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "malformed Basic credentials",
                    )
                });
            }
            Some(Ok((id, secret))) => {
                if body_secret.is_some() {
                    return Err(oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "more than one client authentication method",
                    ));
                }
                (Some(id), Some(secret), true)
            }
            None => (body_id.cloned(), body_secret.cloned(), false),
        };
        let fail = |used_basic: bool| OAuthError {
            basic_challenge: used_basic,
            ..oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        };
        match (id, &cfg.client_secret) {
            (None, _) if !required => Ok(()),
            (None, _) => Err(fail(used_basic)),
            (Some(id), _) if id != cfg.client_id => Err(fail(used_basic)),
            (Some(_), None) => Ok(()),
            (Some(_), Some(expected)) => match secret {
                Some(s) if &s == expected => Ok(()),
                None if !required => Ok(()),
                _ => Err(fail(used_basic)),
            },
        }
    }

    fn grant_authorization_code(
        &self,
        form: &HashMap<String, String>,
    ) -> std::result::Result<Value, OAuthError> {
        let code = form
            .get("code")
            .ok_or_else(|| invalid_grant("missing code"))?;
        let mut db = self.db();
        let pending = db
            .codes
            .remove(code)
            .ok_or_else(|| invalid_grant("unknown or used code"))?;
        if form.get("redirect_uri") != Some(&pending.redirect_uri) {
            return Err(invalid_grant(
                "redirect_uri differs from the authorization request",
            ));
        }
        if let Some(challenge) = &pending.challenge {
            let verifier = form
                .get("code_verifier")
                .ok_or_else(|| invalid_grant("missing code_verifier"))?;
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if &computed != challenge {
                return Err(invalid_grant("PKCE verification failed"));
            }
        }
        let grant = new_grant(&mut db, pending.scope);
        Ok(self.issue(&mut db, grant, true))
    }

    fn grant_refresh(
        &self,
        form: &HashMap<String, String>,
    ) -> std::result::Result<Value, OAuthError> {
        let rt = form
            .get("refresh_token")
            .ok_or_else(|| invalid_grant("missing refresh_token"))?;
        let rotate = self.inner.config.rotate_refresh_tokens;
        let mut db = self.db();
        let (grant, used) = match db.refresh.get(rt) {
            Some(e) => (e.grant, e.used),
            None => return Err(invalid_grant("unknown refresh token")),
        };
        if db.grants.get(&grant).is_none_or(|g| g.revoked) {
            return Err(invalid_grant("the grant was revoked"));
        }
        if used {
            // Reuse of a rotated refresh token: someone has a copy. Revoke the whole grant.
            self.inner
                .counters
                .reuse_detected
                .fetch_add(1, Ordering::SeqCst);
            if let Some(g) = db.grants.get_mut(&grant) {
                g.revoked = true;
            }
            db.access.retain(|_, a| a.grant != grant);
            return Err(invalid_grant("refresh token reused; grant revoked"));
        }
        if rotate && let Some(e) = db.refresh.get_mut(rt) {
            e.used = true;
        }
        Ok(self.issue(&mut db, grant, rotate))
    }

    fn grant_client_credentials(&self, form: &HashMap<String, String>) -> Value {
        let mut db = self.db();
        let grant = new_grant(&mut db, form.get("scope").cloned());
        self.issue(&mut db, grant, false)
    }

    fn grant_jwt_bearer(
        &self,
        form: &HashMap<String, String>,
    ) -> std::result::Result<Value, OAuthError> {
        let assertion = form
            .get("assertion")
            .ok_or_else(|| invalid_grant("missing assertion"))?;
        let claims = match &self.inner.config.jwt_public_key_pem {
            Some(pem) => verify_jwt(assertion, pem)?,
            None => decode_jwt_unverified(assertion)?,
        };
        if claims.get("iss").and_then(Value::as_str) != Some(self.inner.config.client_id.as_str()) {
            return Err(invalid_grant("assertion issuer is not the client"));
        }
        let now = unix_secs((self.inner.config.clock)());
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp > now => {}
            _ => return Err(invalid_grant("assertion expired or without exp")),
        }
        let mut db = self.db();
        let grant = new_grant(
            &mut db,
            claims
                .get("scope")
                .and_then(Value::as_str)
                .map(str::to_string),
        );
        Ok(self.issue(&mut db, grant, false))
    }
}

fn new_grant(db: &mut Db, scope: Option<String>) -> u64 {
    db.next_grant += 1;
    let id = db.next_grant;
    db.grants.insert(
        id,
        Grant {
            revoked: false,
            scope,
        },
    );
    id
}

fn token_set_from_body(body: &Value, now: SystemTime) -> TokenSet {
    let mut t = TokenSet::bearer(body["access_token"].as_str().unwrap_or_default());
    if let Some(rt) = body["refresh_token"].as_str() {
        t = t.with_refresh_token(rt);
    }
    if let Some(secs) = body["expires_in"].as_u64() {
        t = t.with_expires_in(Duration::from_secs(secs), now);
    } else if let Some(at) = body["expires_at"].as_i64() {
        let ms = if at >= 100_000_000_000 { at } else { at * 1000 };
        t.expires_at_ms = Some(ms);
    }
    if let Some(url) = body["instance_url"].as_str() {
        t = t.with_instance_url(url);
    }
    t
}

fn decode_jwt_unverified(jwt: &str) -> std::result::Result<Value, OAuthError> {
    let payload = jwt
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid_grant("assertion is not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid_grant("assertion is not a JWT"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid_grant("assertion is not a JWT"))
}

fn verify_jwt(jwt: &str, pem: &[u8]) -> std::result::Result<Value, OAuthError> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let key = DecodingKey::from_rsa_pem(pem).map_err(|_| {
        oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "bad configured public key",
        )
    })?;
    let mut validation = Validation::new(Algorithm::RS256);
    // exp is checked against the server's (injectable) clock by the caller.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map(|d| d.claims)
        .map_err(|_| invalid_grant("assertion signature invalid"))
}

#[derive(serde::Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

async fn authorize(State(server): State<OAuthServer>, Query(q): Query<AuthorizeQuery>) -> Response {
    server
        .inner
        .counters
        .authorize
        .fetch_add(1, Ordering::SeqCst);
    let cfg = &server.inner.config;
    // Errors about the client or the redirect URI must not redirect (RFC 6749 §4.1.2.1).
    if q.client_id.as_deref() != Some(cfg.client_id.as_str()) {
        return (StatusCode::BAD_REQUEST, "unknown client_id").into_response();
    }
    let redirect_uri = match (&q.redirect_uri, cfg.redirect_uris.first()) {
        (Some(r), _) if cfg.redirect_uris.is_empty() || cfg.redirect_uris.contains(r) => r.clone(),
        (None, Some(only)) if cfg.redirect_uris.len() == 1 => only.clone(),
        _ => return (StatusCode::BAD_REQUEST, "redirect_uri not registered").into_response(),
    };
    let Ok(mut target) = url::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    let error = if q.response_type.as_deref() != Some("code") {
        Some("unsupported_response_type")
    } else if q.code_challenge.is_some() && q.code_challenge_method.as_deref() != Some("S256") {
        Some("invalid_request")
    } else if cfg.client_secret.is_none() && q.code_challenge.is_none() {
        // Public clients must use PKCE.
        Some("invalid_request")
    } else {
        None
    };
    {
        let mut pairs = target.query_pairs_mut();
        match error {
            Some(e) => {
                pairs.append_pair("error", e);
            }
            None => {
                let code = random_token("code");
                server.db().codes.insert(
                    code.clone(),
                    PendingCode {
                        redirect_uri: redirect_uri.clone(),
                        challenge: q.code_challenge.clone(),
                        scope: q.scope.clone(),
                    },
                );
                pairs.append_pair("code", &code);
            }
        }
        if let Some(state) = &q.state {
            pairs.append_pair("state", state);
        }
    }
    let mut resp = StatusCode::FOUND.into_response();
    if let Ok(loc) = HeaderValue::from_str(target.as_str()) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

async fn token(State(server): State<OAuthServer>, headers: HeaderMap, body: Bytes) -> Response {
    let counters = &server.inner.counters;
    counters.token_requests.fetch_add(1, Ordering::SeqCst);
    if !server.inner.config.latency.is_zero() {
        tokio::time::sleep(server.inner.config.latency).await;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    let result = match grant_type {
        "authorization_code" => {
            counters.authorization_code.fetch_add(1, Ordering::SeqCst);
            server
                .authenticate(&headers, &form, server.inner.config.client_secret.is_some())
                .and_then(|()| server.grant_authorization_code(&form))
        }
        "refresh_token" => {
            counters.refresh_token.fetch_add(1, Ordering::SeqCst);
            server
                .authenticate(&headers, &form, server.inner.config.client_secret.is_some())
                .and_then(|()| server.grant_refresh(&form))
        }
        "client_credentials" => {
            counters.client_credentials.fetch_add(1, Ordering::SeqCst);
            if server.inner.config.client_secret.is_none() {
                Err(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "public clients cannot use client_credentials",
                ))
            } else {
                server
                    .authenticate(&headers, &form, true)
                    .map(|()| server.grant_client_credentials(&form))
            }
        }
        g if g == JWT_BEARER_GRANT => {
            counters.jwt_bearer.fetch_add(1, Ordering::SeqCst);
            server
                .authenticate(&headers, &form, false)
                .and_then(|()| server.grant_jwt_bearer(&form))
        }
        _ => Err(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "unknown grant_type",
        )),
    };
    match result {
        Ok(body) => {
            let mut resp = axum::Json(body).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::SeqCst);
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_decoding_follows_rfc6749() {
        // id "a:b c", secret "x+y%z": form-encoded, then base64.
        let header = format!("Basic {}", STANDARD.encode("a%3Ab+c:x%2By%25z"));
        assert_eq!(
            decode_basic_client_auth(&header),
            Some(("a:b c".to_string(), "x+y%z".to_string()))
        );
        assert_eq!(decode_basic_client_auth("Bearer abc"), None);
        assert_eq!(decode_basic_client_auth("Basic !!!"), None);
    }

    #[test]
    fn rotation_and_reuse_detection() {
        let s = OAuthServer::new(OAuthServerConfig::new("c", "s").with_rotation(true));
        let t = s.issue_token_set(None);
        let rt =
            secrecy::ExposeSecret::expose_secret(t.refresh_token.as_ref().unwrap()).to_string();
        let form: HashMap<String, String> = [("refresh_token".to_string(), rt.clone())].into();
        let first = s.grant_refresh(&form).ok().unwrap();
        let new_rt = first["refresh_token"].as_str().unwrap().to_string();
        assert_ne!(new_rt, rt);
        assert!(s.validate_access_token(first["access_token"].as_str().unwrap()));
        let again = s.grant_refresh(&form);
        assert!(matches!(again, Err(ref e) if e.code == "invalid_grant"));
        assert_eq!(s.stats().reuse_detected, 1);
        // the whole grant is gone, including the newest refresh token and access token
        let newer: HashMap<String, String> = [("refresh_token".to_string(), new_rt)].into();
        assert!(s.grant_refresh(&newer).is_err());
        assert!(!s.validate_access_token(first["access_token"].as_str().unwrap()));
    }
}
