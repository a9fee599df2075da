//! The `memory` platform: [`MemoryConnector`] as a plug-in [`Platform`], for tests and demos
//! (the facade's `memory` feature registers it; the server's process tests and the webhook
//! benchmarks run on it).
//!
//! Settings (a connection's `[connection.settings]`): `page_size` (records per page, default
//! 100) and `generated = { <stream> = <count> }` (streams of generated records, computed on
//! the fly). Secret: `webhook_secret` (the Standard Webhooks signing key; default
//! `"memory-secret"` so a demo runs without set-up). The connection's `streams` name its
//! streams (default: the generated ones, else `items`).

use std::collections::BTreeMap;
use std::sync::Arc;

use apex_connect_core::platform::{BuildContext, Platform, SecretKind, SecretSpec, Settings};
use apex_connect_core::{Connector, Error, Result};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::memory::{MemoryConnector, NAME};

/// The `memory` platform descriptor (see the [module docs](self)).
pub static MEMORY: MemoryPlatform = MemoryPlatform;

/// The signing key used when the connection names no `webhook_secret`.
pub const DEFAULT_WEBHOOK_SECRET: &str = "memory-secret";

/// Records per page when the settings do not say.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// Bytes of JSON per generated record.
const GENERATED_PAYLOAD_BYTES: usize = 100;

/// The `memory` platform: builds a [`MemoryConnector`] from a connection's settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryPlatform;

/// The typed settings of a `memory` connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MemorySettings {
    /// Records per page (at least 1; default 100).
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Streams of generated records: stream name -> number of records.
    #[serde(default)]
    pub generated: BTreeMap<String, u64>,
}

fn default_page_size() -> usize {
    DEFAULT_PAGE_SIZE
}

impl Default for MemorySettings {
    fn default() -> Self {
        MemorySettings {
            page_size: DEFAULT_PAGE_SIZE,
            generated: BTreeMap::new(),
        }
    }
}

impl MemorySettings {
    /// Reads and checks the settings.
    ///
    /// # Errors
    /// `Config` for an unknown setting, a value of the wrong type, or `page_size = 0`.
    pub fn from_settings(settings: &Settings) -> Result<Self> {
        let s: MemorySettings = settings.parse()?;
        if s.page_size == 0 {
            return Err(
                Error::config("memory `page_size` must be a positive integer")
                    .with_context("setting", "page_size"),
            );
        }
        Ok(s)
    }
}

const SECRETS: &[SecretSpec] = &[SecretSpec::new(
    "webhook_secret",
    SecretKind::Webhook,
    "signing key of the Standard Webhooks the memory connector verifies",
)];

impl Platform for MemoryPlatform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "in-memory records for tests and demos (no network)"
    }

    fn secrets(&self) -> &'static [SecretSpec] {
        SECRETS
    }

    fn check_settings(&self, settings: &Settings) -> Result<()> {
        MemorySettings::from_settings(settings).map(|_| ())
    }

    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        let settings = MemorySettings::from_settings(ctx.settings)?;
        let mut streams: Vec<String> = ctx.streams.to_vec();
        for s in settings.generated.keys() {
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
            .unwrap_or_else(|| DEFAULT_WEBHOOK_SECRET.as_bytes().to_vec());
        let mut c = MemoryConnector::new(streams, settings.page_size, &secret);
        for (s, n) in settings.generated {
            c = c.with_generated(s, n, GENERATED_PAYLOAD_BYTES);
        }
        Ok(Arc::new(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::platform::{ConnectionAuth, Secrets};
    use apex_connect_core::{ConnectionId, StreamId};

    fn settings(v: serde_json::Value) -> Settings {
        Settings::from_value(v).unwrap()
    }

    #[tokio::test]
    async fn builds_from_settings_and_refuses_typos() {
        let s = settings(serde_json::json!({"page_size": 7, "generated": {"items": 30}}));
        MEMORY.check_settings(&s).unwrap();
        let id = ConnectionId::from("demo");
        let secrets = Secrets::new();
        let streams = vec!["users".to_string()];
        let ctx =
            BuildContext::new(&id, &s, &secrets, ConnectionAuth::Secrets).with_streams(&streams);
        let c = MEMORY.build(&ctx).unwrap();
        let names: Vec<&str> = c
            .info()
            .capabilities
            .streams
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(names, ["users", "items"]);
        let page = c.read(&StreamId::from("items"), None).await.unwrap();
        assert_eq!(page.records.len(), 7);
        assert!(c.webhooks().is_some());

        for bad in [
            serde_json::json!({"page_sise": 7}),
            serde_json::json!({"page_size": 0}),
            serde_json::json!({"page_size": "7"}),
            serde_json::json!({"generated": {"items": -1}}),
        ] {
            let e = MEMORY.check_settings(&settings(bad.clone())).unwrap_err();
            assert_eq!(e.kind(), apex_connect_core::ErrorKind::Config, "{bad}");
        }
        // The shared authentication settings are not the platform's.
        MEMORY
            .check_settings(&settings(serde_json::json!({"client_id": "x"})))
            .unwrap();
    }
}
