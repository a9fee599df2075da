//! The Mixpanel platform descriptor: [`PLATFORM`].

use std::sync::Arc;

use apex_connect_core::platform::{
    BuildContext, ConnectionAuth, Platform, SecretKind, SecretSpec, Settings,
};
use apex_connect_core::{Connector, Error, Result};
use secrecy::SecretString;

use super::NAME;
use super::api::MixpanelAuth;
use super::config::MixpanelConfig;
use super::connector::MixpanelConnector;

/// The secret holding the service account's secret (with the `service_account_username`
/// setting).
pub const SERVICE_ACCOUNT_SECRET: &str = "service_account_secret";
/// The secret holding the legacy project API secret.
pub const API_SECRET: &str = "api_secret";

const SECRETS: &[SecretSpec] = &[
    SecretSpec::new(
        SERVICE_ACCOUNT_SECRET,
        SecretKind::Credential,
        "the service account's secret (HTTP Basic with the service_account_username setting)",
    ),
    SecretSpec::new(
        API_SECRET,
        SecretKind::Credential,
        "the legacy project API secret (when no service account is configured)",
    ),
];

/// The Mixpanel platform: settings [`MixpanelConfig`], secrets `service_account_secret` or
/// `api_secret`, no OAuth (static HTTP Basic credentials).
#[derive(Debug, Clone, Copy, Default)]
pub struct MixpanelPlatform;

/// The descriptor hosts register (`apex_connect_analytics::mixpanel::PLATFORM`).
pub static PLATFORM: MixpanelPlatform = MixpanelPlatform;

impl MixpanelPlatform {
    fn config(settings: &Settings) -> Result<MixpanelConfig> {
        let config: MixpanelConfig = settings.parse()?;
        config.validate()?;
        Ok(config)
    }
}

impl Platform for MixpanelPlatform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Mixpanel: raw events (export), profiles, cohorts and members, funnels"
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn check_settings(&self, settings: &Settings) -> Result<()> {
        Self::config(settings).map(|_| ())
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let mut config = Self::config(ctx.settings)?;
        if !matches!(ctx.auth, ConnectionAuth::Secrets) {
            return Err(
                Error::config("Mixpanel authenticates with static credentials, not OAuth")
                    .with_context("platform", NAME),
            );
        }
        if !ctx.streams.is_empty() {
            config.streams = ctx.streams.to_vec();
            config.validate()?;
        }
        let auth = match &config.service_account_username {
            Some(username) => MixpanelAuth::ServiceAccount {
                username: username.clone(),
                secret: SecretString::from(
                    secrecy::ExposeSecret::expose_secret(
                        ctx.secrets.require(SERVICE_ACCOUNT_SECRET)?,
                    )
                    .to_string(),
                ),
            },
            None => MixpanelAuth::ProjectSecret(SecretString::from(
                secrecy::ExposeSecret::expose_secret(ctx.secrets.require(API_SECRET).map_err(
                    |e| {
                        e.with_context(
                            "hint",
                            "set service_account_username (and the service_account_secret secret), or the api_secret secret",
                        )
                    },
                )?)
                .to_string(),
            )),
        };
        let mut b = MixpanelConnector::builder(config).auth(auth);
        if let Some(url) = ctx.base_url {
            b = b.base_url(url);
        }
        Ok(Arc::new(b.build()?))
    }
}
