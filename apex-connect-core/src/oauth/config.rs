//! `OAuthConfig`: where the authorization server is and how this client authenticates to it.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (the RFC's
    /// recommendation; Front requires it).
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form parameters in the request body (HubSpot).
    RequestBody,
}

/// The OAuth 2.0 settings of one platform application.
///
/// `Debug` never shows the client secret. Serialization (for host configuration files)
/// does include it: keep such files private.
///
/// # Examples
/// ```
/// use apex_connect_core::oauth::{ClientAuth, OAuthConfig};
///
/// let config = OAuthConfig::new("my-client-id", "https://app.frontapp.com/oauth/token")
///     .with_client_secret("my-secret")
///     .with_auth_url("https://app.frontapp.com/oauth/authorize")
///     .with_redirect_url("https://example.com/callback")
///     .with_client_auth(ClientAuth::Basic);
/// assert!(!format!("{config:?}").contains("my-secret"));
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OAuthConfig {
    /// The application's client id.
    pub client_id: String,
    /// The application's client secret (absent for public clients and pure JWT-bearer clients).
    #[serde(default, with = "crate::serde_secret::option")]
    pub client_secret: Option<SecretString>,
    /// The authorization endpoint (needed only for the authorization-code flow).
    #[serde(default)]
    pub auth_url: Option<String>,
    /// The token endpoint.
    pub token_url: String,
    /// The revocation endpoint (RFC 7009), when the platform has one: hosts revoke the
    /// tokens there when a connection is removed.
    #[serde(default)]
    pub revocation_url: Option<String>,
    /// The redirect URI registered with the platform (authorization-code flow).
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// Scopes requested on authorization and client-credentials grants.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How the client authenticates at the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Extra query parameters added to the authorize URL (e.g. `access_type=offline`,
    /// `prompt=consent`).
    #[serde(default)]
    pub extra_authorize_params: Vec<(String, String)>,
}

impl OAuthConfig {
    /// A configuration with a client id and a token endpoint; everything else is optional.
    pub fn new(client_id: impl Into<String>, token_url: impl Into<String>) -> Self {
        OAuthConfig {
            client_id: client_id.into(),
            client_secret: None,
            auth_url: None,
            token_url: token_url.into(),
            revocation_url: None,
            redirect_url: None,
            scopes: Vec::new(),
            client_auth: ClientAuth::default(),
            extra_authorize_params: Vec::new(),
        }
    }

    /// Sets the client secret.
    pub fn with_client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// Sets the authorization endpoint.
    pub fn with_auth_url(mut self, url: impl Into<String>) -> Self {
        self.auth_url = Some(url.into());
        self
    }

    /// Sets the revocation endpoint (RFC 7009).
    pub fn with_revocation_url(mut self, url: impl Into<String>) -> Self {
        self.revocation_url = Some(url.into());
        self
    }

    /// Sets the redirect URI.
    pub fn with_redirect_url(mut self, url: impl Into<String>) -> Self {
        self.redirect_url = Some(url.into());
        self
    }

    /// Sets the requested scopes.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets how the client authenticates at the token endpoint.
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// Adds a query parameter to the authorize URL.
    pub fn with_authorize_param(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.extra_authorize_params.push((key.into(), value.into()));
        self
    }
}

impl fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("auth_url", &self.auth_url)
            .field("token_url", &self.token_url)
            .field("revocation_url", &self.revocation_url)
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("client_auth", &self.client_auth)
            .field("extra_authorize_params", &self.extra_authorize_params)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn serde_round_trip_and_debug_hides_secret() {
        let c = OAuthConfig::new("id", "https://x/token")
            .with_client_secret("s3cr3t-value")
            .with_scopes(["a", "b"]);
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t-value"), "{d}");
        let json = serde_json::to_string(&c).unwrap();
        let back: OAuthConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.client_secret
                .as_ref()
                .map(|s| s.expose_secret().to_string()),
            Some("s3cr3t-value".to_string())
        );
        assert_eq!(back.scopes, vec!["a", "b"]);
        assert_eq!(back.client_auth, ClientAuth::Basic);
        let minimal: OAuthConfig =
            serde_json::from_str(r#"{"client_id":"i","token_url":"https://x/t"}"#).unwrap();
        assert!(minimal.client_secret.is_none());
    }
}
