//! Google Analytics 4: aggregated reports of the Data API (`runReport`), funnels
//! (`runFunnelReport`, v1alpha), weekly cohorts (`cohortSpec`), and the property's metadata
//! for schema discovery. Event-level data is only in the BigQuery export (a later source).
//!
//! The platform descriptor is [`PLATFORM`] (`ga4`); settings are [`Ga4Config`].

pub mod api;
pub mod config;
pub mod connector;
pub mod cursor;
pub mod descriptor;
pub mod error;
pub mod models;
#[cfg(feature = "sim")]
pub mod sim;

/// The platform name: `"ga4"`.
pub const NAME: &str = "ga4";
/// The API version spoken (Data API v1beta; funnels v1alpha).
pub const API_VERSION: &str = "v1beta";

pub use api::{Ga4Api, QuotaTracker};
pub use config::{FunnelSpec, FunnelStep, Ga4Config, ReportSpec};
pub use connector::{Ga4Connector, Ga4ConnectorBuilder};
pub use descriptor::{Ga4Platform, PLATFORM};
pub use error::{Ga4ApiError, Ga4Policy, QuotaKind};
pub use models::streams;
