//! apex-connect-core's integration tests, one binary: the HTTP stack against wiremock, and the
//! run log capture.

mod http;
#[cfg(feature = "run-logs")]
mod run_logs;
#[cfg(feature = "sqlite")]
mod write_gate;
