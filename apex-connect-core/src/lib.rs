#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod connector;
pub mod cursor;
pub mod engine;
pub mod error;
pub mod http;
pub mod model;
pub mod oauth;
pub mod sink;
pub mod sinks;
pub mod store;
pub mod token;
pub mod webhook;

pub use async_trait::async_trait;
pub use connector::{
    Capabilities, Change, Connector, ConnectorExt, ConnectorInfo, StreamInfo, WriteAction, WriteOp,
    WriteReport, WriteResult, read_pages,
};
pub use cursor::{CursorToken, SyncCursor};
pub use error::{Error, ErrorKind, Result};
pub use model::{
    ConnectionId, Entity, EntityKind, Identity, Op, Page, Record, Relation, SourceRef, StreamId,
};
pub use sink::{Ack, Batch, Sink};
pub use token::{MemoryTokenStore, TokenSet, TokenStore, Versioned};
pub use webhook::{VerifiedWebhook, WebhookError, WebhookVerifier};
