//! Integration tests of apex-connect-analytics: Mixpanel and GA4 against their simulators, the
//! shared conformance suite for both, and property tests of the parsers.

mod conformance;
mod fixtures;
mod ga4;
mod mixpanel;
