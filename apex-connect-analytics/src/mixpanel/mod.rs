//! Mixpanel: raw events from the Raw Event Export (JSONL, read line by line as it arrives),
//! user profiles (Engage), cohorts and their members, funnels and their per-day results.
//!
//! The platform descriptor is [`PLATFORM`] (`mixpanel`); settings are [`MixpanelConfig`].

pub mod api;
pub mod config;
pub mod connector;
pub mod cursor;
pub mod descriptor;
pub mod error;
pub mod models;
#[cfg(feature = "sim")]
pub mod sim;

/// The platform name: `"mixpanel"`.
pub const NAME: &str = "mixpanel";
/// The API version spoken (Raw Event Export 2.0 and the Query API).
pub const API_VERSION: &str = "2.0";

pub use api::{MixpanelApi, MixpanelAuth};
pub use config::{MixpanelConfig, Region};
pub use connector::{MixpanelConnector, MixpanelConnectorBuilder};
pub use descriptor::{MixpanelPlatform, PLATFORM};
pub use error::{MixpanelApiError, MixpanelPolicy};
pub use models::streams;
