#![doc = include_str!("../README.md")]
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

/// Webhook ingress, inbox workers, scheduler and admin API (feature `server`); the same crate
/// builds the `apex-connect` binary.
#[cfg(feature = "server")]
pub use apex_connect_server as server;
