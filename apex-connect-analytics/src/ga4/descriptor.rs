//! The GA4 platform descriptor: [`PLATFORM`].

use std::sync::Arc;

use apex_connect_core::http::{Credentials, StaticToken};
use apex_connect_core::oauth::ClientAuth;
use apex_connect_core::platform::{
    BuildContext, ConnectionAuth, Grant, OAuthDefaults, Platform, SecretKind, SecretSpec, Settings,
};
use apex_connect_core::service_account::SERVICE_ACCOUNT_SECRET;
use apex_connect_core::{Connector, Error, Result};
use secrecy::ExposeSecret;

use super::NAME;
use super::config::Ga4Config;
use super::connector::Ga4Connector;

/// Google's token endpoint (also the `aud` of service-account assertions).
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// Google's authorization endpoint (users connecting their own property).
pub const GOOGLE_AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
/// Google's revocation endpoint.
pub const GOOGLE_REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";
/// The read-only Analytics scope.
pub const ANALYTICS_READONLY: &str = "https://www.googleapis.com/auth/analytics.readonly";
/// A static bearer token (short-lived; for trials), when no OAuth is configured.
pub const ACCESS_TOKEN_SECRET: &str = "access_token";

const SECRETS: &[SecretSpec] = &[
    SecretSpec::new(
        SERVICE_ACCOUNT_SECRET,
        SecretKind::SigningKey,
        "a Google service account's JSON key file (JWT bearer; the account needs Viewer on the property)",
    ),
    SecretSpec::new(
        "client_secret",
        SecretKind::OAuthClient,
        "the OAuth client secret, for users who connect their own property",
    ),
    SecretSpec::new(
        ACCESS_TOKEN_SECRET,
        SecretKind::Credential,
        "a Google access token (expires within an hour; for trials)",
    ),
];

/// The GA4 platform: settings [`Ga4Config`]; a service-account key file (JWT bearer, resolved
/// by core's `resolve_auth`), OAuth authorization code, or a static access token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ga4Platform;

/// The descriptor hosts register (`apex_connect_analytics::ga4::PLATFORM`).
pub static PLATFORM: Ga4Platform = Ga4Platform;

impl Ga4Platform {
    fn config(settings: &Settings) -> Result<Ga4Config> {
        let c: Ga4Config = settings.parse()?;
        c.validate()?;
        Ok(c)
    }
}

impl Platform for Ga4Platform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Google Analytics 4: reports (traffic, pages, events, sessions, conversions, your own), funnels, cohorts"
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn oauth(&self, _settings: &Settings) -> Result<Option<OAuthDefaults>> {
        Ok(Some(
            OAuthDefaults::new(GOOGLE_TOKEN_URL)
                .auth_url(GOOGLE_AUTH_URL)
                .revoke_url(GOOGLE_REVOKE_URL)
                .scopes([ANALYTICS_READONLY])
                .client_auth(ClientAuth::RequestBody)
                .grants([
                    Grant::AuthorizationCode,
                    Grant::RefreshToken,
                    Grant::JwtBearer,
                ])
                .jwt_audience(GOOGLE_TOKEN_URL)
                // A refresh token, and on every consent (Google sends it on the first only).
                .authorize_param("access_type", "offline")
                .authorize_param("prompt", "consent"),
        ))
    }

    fn check_settings(&self, settings: &Settings) -> Result<()> {
        Self::config(settings).map(|_| ())
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let mut config = Self::config(ctx.settings)?;
        if !ctx.streams.is_empty() {
            config.streams = Some(ctx.streams.to_vec());
            config.validate()?;
        }
        let (credentials, refresh): (Arc<dyn Credentials>, bool) = match &ctx.auth {
            ConnectionAuth::OAuth(manager) => (manager.clone(), true),
            _ => {
                let token = ctx.secrets.require(ACCESS_TOKEN_SECRET).map_err(|e| {
                    e.with_context(
                        "hint",
                        "give a service_account_json secret (resolved to JWT bearer), connect with OAuth, or set access_token",
                    )
                })?;
                (
                    Arc::new(StaticToken::bearer(token.expose_secret().to_string())),
                    false,
                )
            }
        };
        let mut b = Ga4Connector::builder(config)
            .credentials(credentials)
            .oauth_refresh(refresh);
        if let Some(url) = ctx.base_url {
            b = b.base_url(url);
        }
        let c = b
            .build()
            .map_err(|e: Error| e.with_context("platform", NAME))?;
        Ok(Arc::new(c))
    }
}
