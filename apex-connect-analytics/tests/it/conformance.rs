//! The shared conformance suite, once per platform.

use crate::fixtures::{Ga4Fixture, MixpanelFixture};

async fn mixpanel_fixture() -> MixpanelFixture {
    MixpanelFixture::start().await
}

async fn ga4_fixture() -> Ga4Fixture {
    Ga4Fixture::start().await
}

apex_connect_testkit::conformance!(mixpanel_conformance => mixpanel_fixture);
apex_connect_testkit::conformance!(ga4_conformance => ga4_fixture);
