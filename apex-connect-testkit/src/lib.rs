#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod conformance;
pub mod hostile;
pub mod memory;
pub mod oauth_server;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod platform;
pub mod sim;

pub use memory::{MemoryConnector, MemoryCursor};
