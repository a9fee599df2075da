#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod api;
pub mod bulk;
pub mod config;
pub mod connector;
pub mod cursor;
pub mod descriptor;
pub mod error;
pub mod models;
#[cfg(feature = "sim")]
pub mod sim;
pub mod webhook;

/// The platform name: `"salesforce"`.
pub const NAME: &str = "salesforce";

pub use api::{ApiUsage, SalesforceApi, SalesforceAuth, SalesforcePolicy};
pub use config::{DeleteMode, SalesforceConfig, SalesforceSettings};
pub use connector::{SalesforceConnector, SalesforceConnectorBuilder};
pub use cursor::SalesforceCursor;
pub use descriptor::{PLATFORM, SalesforcePlatform};
pub use error::{SalesforceApiError, SalesforceErrorItem};
#[cfg(feature = "sim")]
pub use sim::{SalesforceSim, SalesforceSimConfig};
pub use webhook::{OutboundMessage, OutboundMessages, OutboundNotification};
