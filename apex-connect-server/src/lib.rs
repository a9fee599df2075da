#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod connections;
pub mod dashboard;
pub mod env;
pub mod inbox;
pub mod ingress;
pub mod listener;
pub mod metrics;
pub mod retention;
pub mod scheduler;
pub mod state;
pub mod tap;
pub mod worker;

pub use admin::{
    ADMIN_TOKEN_ENV, AdminAuth, RejectView, Status, admin_router, identity_router, status,
};
pub use app::App;
pub use config::ServerConfig;
pub use dashboard::Dashboard;
pub use env::Environment;
pub use inbox::InboxAppender;
pub use ingress::webhook_router;
pub use metrics::{Metrics, Outcome};
pub use retention::{Retention, RetentionSettings};
pub use scheduler::{JobSpec, Scheduler, SchedulerConfig};
pub use state::{ConnectionHandle, ServerState};
pub use worker::{WorkerConfig, Workers};
