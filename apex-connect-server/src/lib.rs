#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod admin;
pub mod app;
pub mod config;
pub mod inbox;
pub mod ingress;
pub mod ledger;
pub mod metrics;
pub mod registry;
pub mod scheduler;
pub mod state;
pub mod tap;
pub mod worker;

pub use admin::{Status, admin_router, status};
pub use app::{App, migrate};
pub use config::ServerConfig;
pub use inbox::InboxAppender;
pub use ingress::webhook_router;
pub use ledger::LedgerSink;
pub use metrics::{Metrics, Outcome};
pub use registry::{ConnectorRegistry, FactoryContext, Secrets};
pub use scheduler::{JobSpec, Scheduler, SchedulerConfig, Schedules};
pub use state::{ConnectionHandle, ServerState};
pub use worker::{WorkerConfig, Workers};
