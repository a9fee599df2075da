//! In-process tests of the server: ingress, workers, scheduler, admin.

mod common;
mod dashboard;
mod ingress;
mod lease;
mod platform;
mod sched_tasks;
mod scheduler;
mod security;
mod tap;
mod worker;
