//! The platform descriptor end to end: a connection's settings and secrets give a connector
//! that talks to Front with them.

use apex_connect_core::ConnectionId;
use apex_connect_core::platform::{BuildContext, ConnectionAuth, Platform, Secrets, Settings};
use apex_connect_core::{Connector, ErrorKind, StreamId};
use apex_connect_frontapp::{PLATFORM, streams};
use serde_json::json;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::catch_all;

#[tokio::test]
async fn settings_and_secrets_reach_the_requests() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/tags"))
        .and(query_param("limit", "7"))
        .and(header("authorization", "Bearer settings-token-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "_pagination": {"next": null},
            "_results": [{"id": "tag_1", "name": "VIP", "updated_at": 2.5}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let settings = Settings::from_value(json!({"page_size": 7, "lookback": "90s"})).unwrap();
    PLATFORM.check_settings(&settings).unwrap();
    let secrets = Secrets::from_values([("api_token", "settings-token-1")]);
    let connection = ConnectionId::from("acme-front");
    let streams_wanted = vec!["tags".to_string()];
    let uri = server.uri();
    let ctx = BuildContext::new(&connection, &settings, &secrets, ConnectionAuth::Secrets)
        .with_base_url(Some(&uri))
        .with_streams(&streams_wanted);
    let front = PLATFORM.build(&ctx).unwrap();
    let page = front
        .read(&StreamId::from(streams::TAGS), None)
        .await
        .unwrap();
    assert_eq!(page.records[0].version, Some(2_500));
    let e = front
        .read(&StreamId::from(streams::CONTACTS), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "only the streams asked for");
}
