//! Integration tests of the Salesforce connector: API shapes against wiremock, sync, Bulk,
//! write-back and Outbound Messages against the simulator, property tests of the parsers.

mod api;
#[cfg(feature = "sim")]
mod outbound;
#[cfg(feature = "sim")]
mod platform;
mod props;
#[cfg(feature = "sim")]
mod sync;
#[cfg(feature = "sim")]
mod writeback;

pub(crate) fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}
