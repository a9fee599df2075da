//! In-process tests of the server: ingress, workers, scheduler, admin.

mod common;
mod dashboard;
mod identity;
mod ingress;
mod lease;
#[cfg(feature = "postgres")]
mod pg;
mod platform;
mod sched_tasks;
mod scheduler;
mod security;
mod tap;
mod worker;
