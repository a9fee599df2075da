#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

mod body;
pub mod days;
#[cfg(feature = "ga4")]
pub mod ga4;
#[cfg(feature = "mixpanel")]
pub mod mixpanel;
pub mod quota;
#[cfg(feature = "sim")]
mod sim_util;
