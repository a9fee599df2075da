#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod connector;
pub mod cursor;
pub mod engine;
pub mod error;
pub mod http;
pub mod lenient;
pub mod model;
pub mod oauth;
pub mod platform;
#[cfg(feature = "run-logs")]
pub mod runlog;
pub mod serde_secret;
pub mod service_account;
pub mod sink;
pub mod sinks;
pub mod store;
pub mod token;
pub mod token_identity;
pub mod webhook;

pub use async_trait::async_trait;
pub use connector::{
    Capabilities, Change, Connector, ConnectorExt, ConnectorInfo, PageGuard, StreamInfo,
    StreamSchema, WebhookEvent, Webhooks, WriteAction, WriteOp, WriteReport, WriteResult,
    body_hash, read_pages,
};
pub use cursor::{CursorToken, SyncCursor};
pub use engine::{Progress, RedriveReport, SyncEngine, SyncOptions, SyncReport};
pub use error::{Error, ErrorKind, Result};
pub use http::{
    Credentials, HttpClient, HttpStats, PlatformPolicy, RateGate, RetryConfig, StaticToken,
};
pub use model::{
    ConnectionId, Entity, EntityKind, Identity, Op, Page, RawJson, Record, Reject, RejectStage,
    Relation, SourceRef, StreamId,
};
pub use oauth::{OAuthClient, OAuthConfig, TokenManager};
pub use platform::{BuildContext, ConnectionAuth, Platform, Platforms, Secrets, Settings};
#[cfg(feature = "run-logs")]
pub use runlog::RunLogLayer;
pub use sink::{Ack, Batch, Sink};
#[cfg(feature = "postgres")]
pub use sinks::PgSink;
#[cfg(feature = "sqlite")]
pub use sinks::SqliteSink;
pub use sinks::{ChannelSink, FanoutSink, JsonlSink, MemorySink, NullSink};
#[cfg(feature = "postgres")]
pub use store::PgStore;
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{
    Connection, ConnectionStatus, ConnectionStore, CursorStore, EncryptionKey, InboxStore,
    MemoryStore, OpenedStore, RejectStore, RunId, RunKind, RunOutcome, RunStatus, RunStore,
    ScheduleStore, StateStore,
};
pub use token::{MemoryTokenStore, RefreshLease, TokenSet, TokenStore, Versioned};
pub use token_identity::TokenIdentity;
pub use webhook::{VerifiedWebhook, WebhookError, WebhookVerifier};
