//! [`PLATFORM`]: Salesforce as a plug-in (secrets, OAuth defaults per login host, typed
//! settings, factory).

use std::sync::Arc;

use apex_connect_core::oauth::ClientAuth;
use apex_connect_core::platform::{Grant, OAuthDefaults, SecretKind, SecretSpec};
use apex_connect_core::{BuildContext, ConnectionAuth, Connector, Platform, Result, Settings};
use secrecy::ExposeSecret;

use crate::NAME;
use crate::config::SalesforceSettings;
use crate::connector::SalesforceConnector;

/// The Salesforce platform descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub struct SalesforcePlatform;

/// The descriptor hosts list (`apex_connect_salesforce::PLATFORM`).
pub static PLATFORM: SalesforcePlatform = SalesforcePlatform;

const SECRETS: &[SecretSpec] = &[
    SecretSpec::new(
        "access_token",
        SecretKind::Credential,
        "a static access token (session id) for the instance_url setting, instead of OAuth",
    ),
    SecretSpec::new(
        "client_secret",
        SecretKind::OAuthClient,
        "the connected app's consumer secret (token answers' signatures are checked with it)",
    ),
    SecretSpec::new(
        "private_key",
        SecretKind::SigningKey,
        "the RSA private key (PEM) signing JWT-bearer assertions (auth = \"jwt_bearer\")",
    ),
    SecretSpec::new(
        "outbound_secret",
        SecretKind::Webhook,
        "the secret in the Outbound Message endpoint URL (last path segment or ?secret=)",
    ),
];

impl Platform for SalesforcePlatform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Salesforce: accounts, contacts, leads, opportunities, activities, custom objects; Bulk API 2.0; write-back; Outbound Messages"
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    /// Endpoints on the login host the settings choose (`login`, `test`, My Domain):
    /// authorization code with PKCE, refresh (with rotation), JWT bearer with `aud` the login
    /// host, client credentials; the client authenticates in the request body.
    fn oauth(&self, settings: &Settings) -> Result<Option<OAuthDefaults>> {
        let s: SalesforceSettings = settings.parse()?;
        let login = crate::config::login_url(&s.login_host)?;
        let origin = login.origin().ascii_serialization();
        Ok(Some(
            OAuthDefaults::new(format!("{origin}/services/oauth2/token"))
                .auth_url(format!("{origin}/services/oauth2/authorize"))
                .revoke_url(format!("{origin}/services/oauth2/revoke"))
                .scopes(["api", "refresh_token"])
                .client_auth(ClientAuth::RequestBody)
                .grants([
                    Grant::AuthorizationCode,
                    Grant::RefreshToken,
                    Grant::JwtBearer,
                    Grant::ClientCredentials,
                ])
                .jwt_audience(origin),
        ))
    }

    fn check_settings(&self, settings: &Settings) -> Result<()> {
        let s: SalesforceSettings = settings.parse()?;
        s.resolve().map(|_| ())
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        Ok(Arc::new(builder(ctx)?.build()?))
    }
}

/// The connector builder a [`BuildContext`] describes (the simulator adds its clock to it).
pub(crate) fn builder(ctx: &BuildContext<'_>) -> Result<crate::SalesforceConnectorBuilder> {
    let settings: SalesforceSettings = ctx.settings()?;
    let mut b = SalesforceConnector::builder()
        .settings(settings)
        .streams(ctx.streams);
    if let Some(url) = ctx.base_url {
        b = b.base_url(url);
    }
    if let Some(s) = ctx.secrets.get("client_secret") {
        b = b.client_secret(s.expose_secret());
    }
    if let Some(s) = ctx.secrets.get("outbound_secret") {
        b = b.outbound_secret(s.expose_secret());
    }
    b = match &ctx.auth {
        ConnectionAuth::OAuth(m) => b.token_manager(m.clone()),
        _ => b.access_token(ctx.secrets.require("access_token")?.expose_secret()),
    };
    Ok(b)
}
