#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod api;
pub mod config;
pub mod connector;
pub mod cursor;
pub mod descriptor;
pub mod error;
pub mod models;
#[cfg(feature = "sim")]
pub mod sim;
pub mod webhook;

/// The platform name: `"hubspot"`.
pub const NAME: &str = "hubspot";

pub use api::{HubSpotApi, HubSpotPolicy};
pub use config::HubSpotConfig;
pub use connector::{HubSpotConnector, HubSpotConnectorBuilder, PropertySet, oauth_config};
pub use cursor::HubSpotCursor;
pub use descriptor::{HubSpotPlatform, HubSpotSettings, PLATFORM};
pub use error::HubSpotApiError;
pub use models::{PropertyMapping, streams};
#[cfg(feature = "sim")]
pub use sim::{HubSpotSim, HubSpotSimConfig};
pub use webhook::{HubSpotWebhookVerifier, SignatureVersion};
