//! OAuth 2.0: configuration (by hand, or discovered from the server's metadata:
//! [`OAuthConfig::discover`]), the grants ([`OAuthClient`], on the `oauth2` crate), JWT bearer
//! assertions ([`JwtAssertion`]) and the per-connection [`TokenManager`] that refreshes ahead of
//! expiry, once however many tasks ask, and persists rotated refresh tokens before use.
//!
//! Every HTTP client built here ([`default_http_client`]) has connect and request timeouts
//! and follows no redirects; give [`OAuthClient::new`] one like it.
//!
//! # Examples
//! ```no_run
//! # async fn run(store: std::sync::Arc<dyn apex_connect_core::TokenStore>) -> apex_connect_core::Result<()> {
//! use std::sync::Arc;
//! use apex_connect_core::ConnectionId;
//! use apex_connect_core::oauth::{CallbackParams, OAuthClient, OAuthConfig, TokenManager};
//!
//! let config = OAuthConfig::new("client-id", "https://app.frontapp.com/oauth/token")
//!     .with_client_secret("client-secret")
//!     .with_auth_url("https://app.frontapp.com/oauth/authorize")
//!     .with_redirect_url("https://example.com/callback");
//! let client = OAuthClient::with_default_http(config)?;
//!
//! // 1. Send the user to `req.url`; keep `req.state` and `req.pkce_verifier` in the session.
//! let req = client.authorize_url()?;
//! // 2. On the callback:
//! let callback = CallbackParams::new("code-from-query", "state-from-query");
//! let tokens = client.exchange_code(&callback, &req.state, &req.pkce_verifier).await?;
//! // 3. Store and use them.
//! let manager = Arc::new(
//!     TokenManager::builder(ConnectionId::from("acme-front"), store, Arc::new(client))
//!         .on_reauth_needed(|c| eprintln!("{c} needs re-authorization"))
//!         .build(),
//! );
//! manager.replace(tokens).await?;
//! let _access = manager.access_token().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::SystemTime;

mod client;
mod config;
mod discovery;
mod jwt;
mod manager;

pub use client::{
    AuthorizeRequest, CallbackParams, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    JWT_BEARER_GRANT, OAuthClient, PkceVerifier, StateToken, default_http_client,
    http_client_with_timeouts,
};
pub use config::{ClientAuth, OAuthConfig};
pub use discovery::ProviderMetadata;
pub use jwt::{JwtAssertion, MAX_ASSERTION_LIFETIME};
pub use manager::{
    ClientCredentialsRefresher, DEFAULT_LEASE, DEFAULT_POLL, DEFAULT_SKEW, JwtBearerRefresher,
    ReauthHook, TokenManager, TokenManagerBuilder, TokenRefresher, default_refresh_retry,
};

/// The wall clock, injectable so expiry can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}
