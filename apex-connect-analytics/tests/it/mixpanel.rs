//! Mixpanel against its simulator.
