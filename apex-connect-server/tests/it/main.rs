//! In-process tests of the server: ingress, workers, scheduler, admin.

mod common;
mod ingress;
mod platform;
mod scheduler;
mod tap;
mod worker;
