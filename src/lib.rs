// The README's examples use FrontApp and SQLite: builds without them (the server with only
// the `memory` platform, say) document the crate with a short text instead, so their doctests
// do not fail.
#![cfg_attr(
    all(feature = "frontapp", feature = "sqlite"),
    doc = include_str!("../README.md")
)]
#![cfg_attr(
    not(all(feature = "frontapp", feature = "sqlite")),
    doc = "Connect a host application to FrontApp, HubSpot, Salesforce and analytics platforms: \
           sync, webhooks, OAuth, write-back. The README (and these docs with the `frontapp` \
           and `sqlite` features) show how; `platforms()` lists what this build compiled in."
)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub use apex_connect_core::*;

/// The FrontApp connector (feature `frontapp`).
#[cfg(feature = "frontapp")]
pub use apex_connect_frontapp as frontapp;

/// The HubSpot connector (feature `hubspot`).
#[cfg(feature = "hubspot")]
pub use apex_connect_hubspot as hubspot;

/// The Salesforce connector (feature `salesforce`).
#[cfg(feature = "salesforce")]
pub use apex_connect_salesforce as salesforce;

/// The Mixpanel and Google Analytics 4 connectors (feature `analytics`).
#[cfg(feature = "analytics")]
pub use apex_connect_analytics as analytics;

/// The `memory` platform and the rest of the testkit (feature `memory`: tests and demos).
#[cfg(feature = "memory")]
pub use apex_connect_testkit as testkit;

/// Webhook ingress, inbox workers, scheduler, admin API and the `apex-connect` command line
/// (feature `server`; the `apex-connect` binary of this package runs it).
#[cfg(feature = "server")]
pub use apex_connect_server as server;

/// The platforms compiled into this build, one per platform feature: what the server, the
/// command line and hosts iterate (they name no platform).
///
/// Adding a platform is a new crate exporting its descriptor (`pub static PLATFORM`), one
/// line here and its feature in `Cargo.toml`.
pub fn platforms() -> Platforms {
    #[allow(unused_mut)]
    let mut p = Platforms::new();
    #[cfg(feature = "frontapp")]
    p.add(Arc::new(Registered(&apex_connect_frontapp::PLATFORM)));
    #[cfg(feature = "hubspot")]
    p.add(Arc::new(Registered(&apex_connect_hubspot::PLATFORM)));
    #[cfg(feature = "salesforce")]
    p.add(Arc::new(Registered(&apex_connect_salesforce::PLATFORM)));
    #[cfg(feature = "analytics")]
    p.add(Arc::new(Registered(
        &apex_connect_analytics::mixpanel::PLATFORM,
    )));
    #[cfg(feature = "analytics")]
    p.add(Arc::new(Registered(&apex_connect_analytics::ga4::PLATFORM)));
    #[cfg(feature = "memory")]
    p.add(Arc::new(Registered(
        &apex_connect_testkit::platform::MEMORY,
    )));
    p
}

#[allow(unused_imports)]
use std::sync::Arc;

use apex_connect_core::platform::{OAuthDefaults, SecretSpec};

/// A platform crate's `static` descriptor, registered as an `Arc<dyn Platform>`.
#[derive(Debug)]
#[allow(dead_code)]
struct Registered(&'static dyn Platform);

impl Platform for Registered {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn description(&self) -> &'static str {
        self.0.description()
    }
    fn secrets(&self) -> &'static [SecretSpec] {
        self.0.secrets()
    }
    fn oauth(&self, settings: &Settings) -> Result<Option<OAuthDefaults>> {
        self.0.oauth(settings)
    }
    fn check_settings(&self, settings: &Settings) -> Result<()> {
        self.0.check_settings(settings)
    }
    fn build(&self, ctx: &BuildContext<'_>) -> Result<Arc<dyn Connector>> {
        self.0.build(ctx)
    }
}
