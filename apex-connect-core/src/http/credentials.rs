//! How the HTTP stack gets the `Authorization` header: the `Credentials` trait.

use std::fmt;

use async_trait::async_trait;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{Error, ErrorKind, Result};

/// Supplies the `Authorization` header for each request attempt.
///
/// Implemented by a static API key ([`StaticToken`]) and by the OAuth token manager
/// ([`crate::oauth::TokenManager`]). Held as `Arc<dyn Credentials>` by the auth middleware.
///
/// # Behavior
/// - `authorization` returns a value that is fresh enough to send now (the token manager
///   refreshes ahead of expiry, once however many tasks ask). The value is marked sensitive.
/// - `refresh_after_unauthorized(rejected)` is called when the API answered 401 to a request
///   sent with `rejected`. It returns `Ok(true)` if a new credential is now available and one
///   retry may succeed (if another task already refreshed since, it does not refresh again),
///   `Ok(false)` if nothing can be done (static keys), and `Err(Unauthenticated)` if the grant
///   is gone (`invalid_grant`: the connection needs re-authorization).
#[async_trait]
pub trait Credentials: Send + Sync + fmt::Debug {
    /// The `Authorization` header value to send now.
    ///
    /// # Errors
    /// `Unauthenticated` when no usable credential exists; network kinds while refreshing.
    async fn authorization(&self) -> Result<HeaderValue>;

    /// Reacts to a 401 for a request sent with `rejected`.
    ///
    /// # Errors
    /// `Unauthenticated` when the grant is revoked or invalid.
    async fn refresh_after_unauthorized(&self, rejected: &HeaderValue) -> Result<bool>;
}

/// A fixed bearer token or API key (Front API tokens, HubSpot private app tokens).
#[derive(Clone)]
pub struct StaticToken {
    header: SecretString,
}

impl StaticToken {
    /// `Authorization: Bearer <token>`.
    pub fn bearer(token: impl Into<String>) -> Self {
        StaticToken {
            header: SecretString::from(format!("Bearer {}", token.into())),
        }
    }

    /// `Authorization: <value>` verbatim (other schemes).
    pub fn raw(value: impl Into<String>) -> Self {
        StaticToken {
            header: SecretString::from(value.into()),
        }
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken([redacted])")
    }
}

#[async_trait]
impl Credentials for StaticToken {
    async fn authorization(&self) -> Result<HeaderValue> {
        let mut v = HeaderValue::from_str(self.header.expose_secret()).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                "token contains characters not allowed in a header",
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    async fn refresh_after_unauthorized(&self, _rejected: &HeaderValue) -> Result<bool> {
        Ok(false)
    }
}
