//! The shared conformance suite, once per platform.

use crate::fixtures::MixpanelFixture;

async fn mixpanel_fixture() -> MixpanelFixture {
    MixpanelFixture::start().await
}

apex_connect_testkit::conformance!(mixpanel_conformance => mixpanel_fixture);
