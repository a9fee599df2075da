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
pub mod schema;
#[cfg(feature = "sim")]
pub mod sim;
pub mod webhook;

/// The platform name: `"frontapp"`.
pub const NAME: &str = "frontapp";

pub use api::{FrontApi, FrontPolicy, RawList};
pub use config::FrontConfig;
pub use connector::{FrontConnector, FrontConnectorBuilder};
pub use descriptor::{FrontPlatform, FrontSettings, PLATFORM};
pub use error::FrontApiError;
pub use models::streams;
#[cfg(feature = "sim")]
pub use sim::{FrontSim, FrontSimConfig, FrontSimHandle};
pub use webhook::{FrontAppWebhookVerifier, FrontRuleWebhookVerifier};
