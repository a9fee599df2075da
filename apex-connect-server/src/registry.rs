//! The connector registry: platform name -> factory building an `Arc<dyn Connector>` from a
//! connection's configuration and its secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use apex_connect_core::store::StateStore;
use apex_connect_core::{Connector, Error, Result};
use secrecy::SecretString;

use crate::config::ConnectionConfig;

/// The secrets of one connection, read from the environment variables its `env` table names.
/// `Debug` shows only the secret names.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, SecretString>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.values.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secrets {
    /// Reads the variables named in `connection.env`; an unset variable is simply absent
    /// (the factory decides whether it needs it).
    pub fn from_env(connection: &ConnectionConfig) -> Self {
        Self::from_lookup(connection, |var| std::env::var(var).ok())
    }

    /// Like [`Secrets::from_env`] with another lookup (tests).
    pub fn from_lookup(
        connection: &ConnectionConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let values = connection
            .env
            .iter()
            .filter_map(|(name, var)| lookup(var).map(|v| (name.clone(), SecretString::from(v))))
            .collect();
        Secrets { values }
    }

    /// Secrets from explicit values (tests, hosts).
    pub fn from_values<I, K, V>(values: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Secrets {
            values: values
                .into_iter()
                .map(|(k, v)| (k.into(), SecretString::from(v.into())))
                .collect(),
        }
    }

    /// The secret `name`, if set.
    pub fn get(&self, name: &str) -> Option<&SecretString> {
        self.values.get(name)
    }

    /// The secret `name`.
    ///
    /// # Errors
    /// `Config` naming the secret and the variable that should hold it.
    pub fn require(&self, name: &str, connection: &ConnectionConfig) -> Result<&SecretString> {
        self.values.get(name).ok_or_else(|| {
            let var = connection
                .env
                .get(name)
                .map(String::as_str)
                .unwrap_or("(not named in `env`)");
            Error::config("a secret the connector needs is not set")
                .with_context("connection", &connection.id)
                .with_context("secret", name)
                .with_context("variable", var)
        })
    }
}

/// What a factory gets to build a connector.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FactoryContext<'a> {
    /// The connection's configuration.
    pub connection: &'a ConnectionConfig,
    /// Its secrets.
    pub secrets: &'a Secrets,
    /// The state store (encrypted OAuth tokens live there).
    pub store: &'a Arc<dyn StateStore>,
}

impl<'a> FactoryContext<'a> {
    /// A context from its parts.
    pub fn new(
        connection: &'a ConnectionConfig,
        secrets: &'a Secrets,
        store: &'a Arc<dyn StateStore>,
    ) -> Self {
        FactoryContext {
            connection,
            secrets,
            store,
        }
    }
}

/// Builds a connector for one connection.
pub type ConnectorFactory =
    Arc<dyn Fn(FactoryContext<'_>) -> Result<Arc<dyn Connector>> + Send + Sync>;

/// Platform name -> [`ConnectorFactory`].
#[derive(Clone, Default)]
pub struct ConnectorRegistry {
    factories: BTreeMap<String, ConnectorFactory>,
}

impl fmt::Debug for ConnectorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorRegistry")
            .field("platforms", &self.factories.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ConnectorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The platforms compiled into this build (`memory` with the `memory` feature).
    pub fn builtin() -> Self {
        #[allow(unused_mut)]
        let mut r = Self::new();
        #[cfg(feature = "memory")]
        r.register(memory::NAME, Arc::new(memory::factory));
        #[cfg(feature = "frontapp")]
        r.register(apex_connect_frontapp::NAME, Arc::new(platforms::frontapp));
        #[cfg(feature = "hubspot")]
        r.register(apex_connect_hubspot::NAME, Arc::new(platforms::hubspot));
        r
    }

    /// Adds (or replaces) the factory of `platform`.
    pub fn register(
        &mut self,
        platform: impl Into<String>,
        factory: ConnectorFactory,
    ) -> &mut Self {
        self.factories.insert(platform.into(), factory);
        self
    }

    /// The registered platform names.
    pub fn platforms(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    /// Builds the connector of a connection.
    ///
    /// # Errors
    /// `Config` for an unknown platform; the factory's errors otherwise.
    pub fn build(&self, ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let f = self
            .factories
            .get(&ctx.connection.platform)
            .ok_or_else(|| {
                Error::config("no connector for this platform in this build")
                    .with_context("platform", &ctx.connection.platform)
                    .with_context(
                        "known",
                        self.factories.keys().cloned().collect::<Vec<_>>().join(","),
                    )
            })?;
        f(ctx).map_err(|e| e.with_context("connection", &ctx.connection.id))
    }
}

/// Factories of the platform crates compiled in (features `frontapp`, `hubspot`).
#[cfg(any(feature = "frontapp", feature = "hubspot"))]
pub mod platforms {
    use std::sync::Arc;

    use apex_connect_core::{Connector, Error, Result};

    use super::FactoryContext;

    fn int_setting(ctx: &FactoryContext<'_>, key: &str) -> Result<Option<u64>> {
        match ctx.connection.settings.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .and_then(|n| u64::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::config("setting must be a non-negative integer")
                        .with_context("setting", key)
                }),
        }
    }

    /// FrontApp: secrets `api_token` (required), `webhook_secret` (app webhooks; enables
    /// them), `rule_webhook_secret`; settings `page_size`; `base_url`, `streams`.
    ///
    /// # Errors
    /// `Config` for a missing token or a bad setting.
    #[cfg(feature = "frontapp")]
    pub fn frontapp(ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let c = ctx.connection;
        let mut b = apex_connect_frontapp::FrontConnector::builder()
            .api_token(ctx.secrets.require("api_token", c)?.clone());
        if let Some(url) = &c.base_url {
            b = b.base_url(url.clone());
        }
        if !c.streams.is_empty() {
            b = b.streams(c.streams.clone());
        }
        if let Some(n) = int_setting(&ctx, "page_size")? {
            b = b.page_size(u32::try_from(n).unwrap_or(u32::MAX));
        }
        if let Some(s) = ctx.secrets.get("webhook_secret") {
            b = b.webhook_secret(s.clone());
        }
        if let Some(s) = ctx.secrets.get("rule_webhook_secret") {
            b = b.rule_webhook_secret(s.clone());
        }
        Ok(Arc::new(b.build()?))
    }

    /// HubSpot: secrets `private_app_token` (required), `client_secret` (webhook signatures;
    /// enables webhooks); settings `app_id`, `webhook_target_url` (as configured in HubSpot,
    /// signed by v2/v3), `page_size`; `base_url`.
    ///
    /// # Errors
    /// `Config` for a missing token or a bad setting.
    #[cfg(feature = "hubspot")]
    pub fn hubspot(ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let c = ctx.connection;
        let mut b = apex_connect_hubspot::HubSpotConnector::builder()
            .private_app_token(ctx.secrets.require("private_app_token", c)?.clone());
        if let Some(url) = &c.base_url {
            b = b.base_url(url.clone());
        }
        if let Some(s) = ctx.secrets.get("client_secret") {
            b = b.client_secret(s.clone());
        }
        if let Some(url) = c
            .settings
            .get("webhook_target_url")
            .and_then(|v| v.as_str())
        {
            b = b.webhook_target_url(url.to_string());
        }
        if let Some(id) = int_setting(&ctx, "app_id")? {
            b = b.app_id(id);
        }
        if let Some(n) = int_setting(&ctx, "page_size")? {
            b = b.page_size(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Ok(Arc::new(b.build()?))
    }
}

/// The `memory` platform ([`apex_connect_testkit::MemoryConnector`]), for tests and demos only.
///
/// Settings: `page_size` (default 100), `generated = { stream = count }` (streams of generated
/// records). Secret: `webhook_secret` (Standard Webhooks signing key; default `"memory-secret"`
/// so a demo runs without setup).
#[cfg(feature = "memory")]
pub mod memory {
    use std::sync::Arc;

    use apex_connect_core::{Connector, Error, Result};
    use apex_connect_testkit::MemoryConnector;
    use secrecy::ExposeSecret;

    use super::FactoryContext;

    /// The platform name.
    pub const NAME: &str = "memory";

    /// Builds a [`MemoryConnector`] from a connection's settings.
    ///
    /// # Errors
    /// `Config` for settings of the wrong type.
    pub fn factory(ctx: FactoryContext<'_>) -> Result<Arc<dyn Connector>> {
        let settings = &ctx.connection.settings;
        let page_size = match settings.get("page_size") {
            None => 100,
            Some(v) => v
                .as_integer()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| Error::config("memory `page_size` must be a positive integer"))?,
        };
        let mut streams: Vec<String> = ctx.connection.streams.clone();
        let generated = match settings.get("generated") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| {
                    v.as_integer()
                        .and_then(|n| u64::try_from(n).ok())
                        .map(|n| (k.clone(), n))
                        .ok_or_else(|| Error::config("memory `generated` counts are integers"))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(Error::config("memory `generated` is a table")),
        };
        for (s, _) in &generated {
            if !streams.contains(s) {
                streams.push(s.clone());
            }
        }
        if streams.is_empty() {
            streams.push("items".into());
        }
        let secret = ctx
            .secrets
            .get("webhook_secret")
            .map(|s| s.expose_secret().as_bytes().to_vec())
            .unwrap_or_else(|| b"memory-secret".to_vec());
        let mut c = MemoryConnector::new(streams, page_size, &secret);
        for (s, n) in generated {
            c = c.with_generated(s, n, 100);
        }
        Ok(Arc::new(c))
    }
}
