//! Signed JWT assertions for the JWT bearer grant (RFC 7523): Salesforce's JWT bearer flow and
//! Google service accounts.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde::Serialize;

use super::{Clock, system_clock};
use crate::error::{Error, Result};
use crate::webhook::unix_ms;

/// The longest lifetime an assertion may have: Salesforce rejects `exp` more than three
/// minutes ahead, and a short-lived assertion is less useful to a thief.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(180);

/// Builds and signs (RS256) the JWT of a JWT bearer grant.
///
/// Claims: `iss` (client id / consumer key / service-account email), `sub` (the user, when the
/// platform wants one), `aud` (the authorization server), `iat`, `exp` (at most three minutes
/// after `iat`), and `scope` when set (Google). `Debug` never shows the key.
///
/// # Examples
/// ```no_run
/// # fn main() -> apex_connect_core::Result<()> {
/// use apex_connect_core::oauth::JwtAssertion;
/// let pem = std::fs::read("key.pem").unwrap();
/// let assertion = JwtAssertion::from_rsa_pem(&pem, "consumer-key", "https://login.salesforce.com")?
///     .subject("integration@example.com");
/// let jwt = assertion.sign()?;
/// # let _ = jwt; Ok(()) }
/// ```
#[derive(Clone)]
pub struct JwtAssertion {
    key: EncodingKey,
    key_id: Option<String>,
    issuer: String,
    subject: Option<String>,
    audience: String,
    scope: Option<String>,
    lifetime: Duration,
    clock: Clock,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    aud: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

impl JwtAssertion {
    /// An assertion signed with an RSA private key in PEM (PKCS#1 or PKCS#8).
    ///
    /// # Errors
    /// `Config` when the key is not a usable RSA private key (the message never shows it).
    pub fn from_rsa_pem(
        pem: &[u8],
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| {
            Error::config("the JWT signing key is not an RSA private key in PEM")
                .set_source(KeyError(e.kind().clone()))
        })?;
        Ok(JwtAssertion {
            key,
            key_id: None,
            issuer: issuer.into(),
            subject: None,
            audience: audience.into(),
            scope: None,
            lifetime: MAX_ASSERTION_LIFETIME,
            clock: system_clock(),
        })
    }

    /// Sets `sub` (Salesforce: the username; Google: a user to impersonate).
    pub fn subject(mut self, sub: impl Into<String>) -> Self {
        self.subject = Some(sub.into());
        self
    }

    /// Sets the `scope` claim (Google: space-separated scopes).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Sets the `kid` header (Google: the private key id).
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.key_id = Some(kid.into());
        self
    }

    /// Sets the lifetime, capped at [`MAX_ASSERTION_LIFETIME`].
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime.min(MAX_ASSERTION_LIFETIME);
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs a fresh assertion (new `iat`/`exp` on each call).
    ///
    /// # Errors
    /// `Config` when signing fails.
    pub fn sign(&self) -> Result<SecretString> {
        let iat = unix_ms((self.clock)()) / 1000;
        let claims = Claims {
            iss: &self.issuer,
            sub: self.subject.as_deref(),
            aud: &self.audience,
            iat,
            exp: iat + self.lifetime.as_secs() as i64,
            scope: self.scope.as_deref(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            Error::config("signing the JWT assertion failed").set_source(KeyError(e.kind().clone()))
        })?;
        Ok(SecretString::from(jwt))
    }
}

impl fmt::Debug for JwtAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAssertion")
            .field("key", &"[redacted]")
            .field("key_id", &self.key_id)
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("audience", &self.audience)
            .field("scope", &self.scope)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The kind of a `jsonwebtoken` error, without any key material.
#[derive(Debug)]
struct KeyError(jsonwebtoken::errors::ErrorKind);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for KeyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_is_config_error() {
        let e = JwtAssertion::from_rsa_pem(b"not a key", "iss", "aud").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
    }
}
