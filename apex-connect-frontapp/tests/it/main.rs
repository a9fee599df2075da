//! API tests against wiremock on loopback, with fixtures shaped like Front's documented
//! responses (tests/fixtures/).

mod descriptor;
mod discover;
mod hostile;
mod nested;

use std::time::{Duration, Instant};

use apex_connect_core::http::RetryConfig;
use apex_connect_core::{
    Connector, CursorToken, ErrorKind, Op, RejectStage, StreamId, SyncCursor, WriteAction, WriteOp,
};
use apex_connect_frontapp::cursor::{ConversationsCursor, ListPosition};
use apex_connect_frontapp::{FrontApiError, FrontConnector, streams};
use secrecy::SecretString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{any, body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "front-test-token-9f8e";

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {p}: {e}"))
}

fn json_fixture(name: &str, next: Option<&str>) -> Value {
    let text = fixture(name);
    let text = match next {
        Some(n) => text.replace("{{NEXT}}", n),
        None => text,
    };
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn fast_retry() -> RetryConfig {
    RetryConfig {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(10),
        ..Default::default()
    }
}

/// A catch-all that names what was not matched (lowest priority).
async fn catch_all(server: &MockServer) {
    Mock::given(any())
        .respond_with(|req: &Request| {
            ResponseTemplate::new(599)
                .set_body_string(format!("unmatched request: {} {}", req.method, req.url))
        })
        .with_priority(u8::MAX)
        .mount(server)
        .await;
}

fn connector(server: &MockServer) -> FrontConnector {
    FrontConnector::builder()
        .base_url(server.uri())
        .api_token(SecretString::from(TOKEN))
        // `localhost` plays the company host (`<company>.api.frontapp.com`) of next links.
        .extra_api_hosts(["localhost"])
        .retry(fast_retry())
        .build()
        .expect("connector")
}

fn company_url(server: &MockServer, path_and_query: &str) -> String {
    let port = server.address().port();
    format!("http://localhost:{port}{path_and_query}")
}

#[tokio::test]
async fn conversations_page_across_company_host_next_link() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    let next = company_url(
        &server,
        "/conversations?limit=100&page_token=ce787da6f075740cf1",
    );
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .and(query_param("page_token", "ce787da6f075740cf1"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json_fixture("conversations_page2.json", None)),
        )
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .and(query_param("limit", "100"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json_fixture("conversations_page1.json", Some(&next))),
        )
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;

    let front = connector(&server);
    let s = StreamId::from(streams::CONVERSATIONS);
    let p1 = front.read(&s, None).await.unwrap();
    assert!(p1.has_more);
    assert_eq!(p1.records.len(), 1);
    let r = &p1.records[0];
    assert_eq!(r.id, "cnv_yo1kg5q");
    assert_eq!(r.version, Some(1_701_292_649_333));
    assert_eq!(
        r.raw.to_value().unwrap()["metadata"]["external_conversation_ids"][0],
        "JS3949"
    );
    let e = front.map_entity(r).unwrap().unwrap();
    assert_eq!(e.name.as_deref(), Some("How to prank Dwight Schrute"));
    assert!(
        e.relations
            .iter()
            .any(|rel| rel.kind == "recipient" && rel.target.id == "crd_2njtoem")
    );
    assert!(
        e.relations
            .iter()
            .any(|rel| rel.kind == "tagged" && rel.target.id == "tag_2oxhvy")
    );
    assert_eq!(e.custom_fields["Priority"], "high");

    let p2 = front.read(&s, p1.next.as_ref()).await.unwrap();
    assert!(!p2.has_more, "a null next ends the backfill");
    assert_eq!(p2.records[0].id, "cnv_y4xb93i");
    assert!(matches!(
        ConversationsCursor::from_token(p2.next.as_ref().unwrap()).unwrap(),
        ConversationsCursor::Events(_)
    ));
}

#[tokio::test]
async fn short_page_is_not_the_end() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    let next = company_url(&server, "/tags?limit=100&page_token=p2");
    Mock::given(method("GET"))
        .and(path("/tags"))
        .and(query_param("page_token", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "_pagination": {"next": null}, "_links": {}, "_results": [{"id": "tag_2", "name": "B", "updated_at": 2.0}]
        })))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/tags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "_pagination": {"next": next}, "_links": {}, "_results": []
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    let front = connector(&server);
    let s = StreamId::from(streams::TAGS);
    let p1 = front.read(&s, None).await.unwrap();
    assert!(
        p1.records.is_empty() && p1.has_more,
        "an empty page with a next link continues"
    );
    let p2 = front.read(&s, p1.next.as_ref()).await.unwrap();
    assert_eq!(p2.records[0].id, "tag_2");
    assert!(!p2.has_more);
}

#[tokio::test]
async fn next_link_to_another_host_is_refused() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json_fixture(
            "conversations_page1.json",
            Some("https://evil.example.com/conversations?page_token=steal"),
        )))
        .mount(&server)
        .await;
    let front = connector(&server);
    let s = StreamId::from(streams::CONVERSATIONS);
    let p1 = front.read(&s, None).await.unwrap();
    // The link is stored as given; following it is refused before anything is sent.
    let e = front.read(&s, p1.next.as_ref()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    let text = format!("{e} {e:?}");
    assert!(text.contains("evil.example.com"), "{text}");
    assert!(!text.contains("steal") && !text.contains(TOKEN), "{text}");

    // A forged cursor naming another host is refused the same way.
    let forged = ConversationsCursor::Backfill(ListPosition::new(
        Some("https://attacker.example.net/conversations".into()),
        0,
    ))
    .to_token();
    let e = front.read(&s, Some(&forged)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn front_errors_map_to_kinds() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/me"))
        .respond_with(ResponseTemplate::new(403).set_body_json(serde_json::json!(
            {"_error": {"status": 403, "title": "Forbidden", "message": "Missing scope"}}
        )))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/conversations/cnv_yo1kg5q/tags"))
        .and(body_json(serde_json::json!({"tag_ids": ["tag_nope"]})))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(json_fixture("error_400_array.json", None)),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/conversations/cnv_nope/comments"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json_fixture("error_404.json", None)),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/conversations/cnv_yo1kg5q/tags"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let front = connector(&server);
    let e = front.check().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("Missing scope"), "{e}");
    assert_eq!(
        e.downcast_source::<FrontApiError>()
            .unwrap()
            .title
            .as_deref(),
        Some("Forbidden")
    );

    let report = front
        .write(
            &StreamId::from(streams::CONVERSATIONS),
            vec![
                WriteOp::new(
                    WriteAction::Custom("tag".into()),
                    Some("cnv_yo1kg5q".into()),
                    serde_json::json!({"tag_ids": ["tag_nope"]}),
                ),
                WriteOp::new(
                    WriteAction::Custom("comment".into()),
                    Some("cnv_nope".into()),
                    serde_json::json!({"body": "x"}),
                ),
                WriteOp::new(
                    WriteAction::Custom("untag".into()),
                    Some("cnv_yo1kg5q".into()),
                    serde_json::json!({"tag_ids": ["tag_1"]}),
                )
                .with_key("k3"),
            ],
        )
        .await
        .unwrap();
    let e0 = report.results[0].outcome.as_ref().unwrap_err();
    assert_eq!(e0.kind(), ErrorKind::InvalidInput);
    assert!(e0.to_string().contains("tag_nope does not exist"), "{e0}");
    assert_eq!(
        report.results[1].outcome.as_ref().unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(report.results[2].key, "k3");
    assert_eq!(report.results[2].outcome.as_ref().unwrap(), "cnv_yo1kg5q");
}

#[tokio::test]
async fn rate_limited_request_is_retried_after_retry_after() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/teammates"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .insert_header("x-ratelimit-limit", "100")
                .insert_header("x-ratelimit-remaining", "0")
                .set_body_json(
                    serde_json::json!({"_error": {"status": 429, "title": "Too many requests"}}),
                ),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/teammates"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "_links": {"self": "x"},
            "_results": [{"id": "tea_6r55a", "email": "michael.scott@dundermifflin.com", "first_name": "Michael", "last_name": "Scott"}]
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    let front = connector(&server);
    let started = Instant::now();
    let page = front
        .read(&StreamId::from(streams::TEAMMATES), None)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        front
            .map_entity(&page.records[0])
            .unwrap()
            .unwrap()
            .name
            .as_deref(),
        Some("Michael Scott")
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    assert_eq!(front.http_stats().rate_limited, 1);
}

#[tokio::test]
async fn malformed_json_is_a_permanent_invalid_response() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/inboxes"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw("{\"_results\": [oops", "application/json"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/tags"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"_results": [{"name": "no id"}]})),
        )
        .mount(&server)
        .await;
    let front = connector(&server);
    let e = front
        .read(&StreamId::from(streams::INBOXES), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    // An object without an id cannot be read: it is quarantined, the page goes on.
    let page = front
        .read(&StreamId::from(streams::TAGS), None)
        .await
        .unwrap();
    assert!(page.records.is_empty());
    assert_eq!(page.rejects.len(), 1, "an object without id");
    let reject = &page.rejects[0];
    assert_eq!(reject.stage, RejectStage::Parse);
    assert_eq!(reject.id, None);
    assert!(reject.error.contains("has no id"), "{}", reject.error);
    assert_eq!(&reject.raw[..], br#"{"name":"no id"}"#);
}

#[tokio::test]
async fn truncated_body_is_a_temporary_error() {
    // A server that promises 4096 bytes, sends 40 and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"_results\": [{\"id\": \"inb_1\", \"name\": \"Su")
                .await;
            let _ = sock.shutdown().await;
        }
    });
    let mut retry = fast_retry();
    retry.max_attempts = 1;
    let front = FrontConnector::builder()
        .base_url(format!("http://{addr}"))
        .api_token(SecretString::from(TOKEN))
        .retry(retry)
        .build()
        .unwrap();
    let e = front
        .read(&StreamId::from(streams::INBOXES), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::InvalidResponse | ErrorKind::Network),
        "{e:?}"
    );
    assert!(e.is_temporary(), "{e:?}");
}

#[tokio::test]
async fn messages_walk_nested_and_events_fetch_named_objects() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json_fixture("conversations_page2.json", None)),
        )
        .mount(&server)
        .await;
    let msg_next = company_url(
        &server,
        "/conversations/cnv_y4xb93i/messages?limit=100&page_token=m2",
    );
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_y4xb93i/messages"))
        .and(query_param("page_token", "m2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "_pagination": {"next": null}, "_links": {},
            "_results": [json_fixture("message.json", None)]
        })))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_y4xb93i/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "_pagination": {"next": msg_next}, "_links": {},
            "_results": [{"id": "msg_first", "created_at": 1701292000, "text": "first"}]
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    let front = connector(&server);
    let s = StreamId::from(streams::MESSAGES);
    let p = front.read(&s, None).await.unwrap();
    let ids: Vec<&str> = p.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["msg_first", "msg_1q15qmtq"],
        "both pages of the conversation in one read"
    );
    assert!(!p.has_more);
    let m = &p.records[1];
    let e = front.map_entity(m).unwrap().unwrap();
    assert!(
        e.relations
            .iter()
            .any(|r| r.kind == "in_conversation" && r.target.id == "cnv_yo1kg5q")
    );
    assert_eq!(
        e.attributes["attachments"][0]["filename"],
        "Andy_Anger_Management_Certificate.png"
    );
    assert_eq!(
        front.map_entity(&p.records[0]).unwrap().unwrap().relations[0]
            .target
            .id,
        "cnv_y4xb93i"
    );
    assert_eq!(p.records[0].parent.as_deref(), Some("cnv_y4xb93i"));

    // Incremental: conversations named by events are fetched (once per page).
    Mock::given(method("GET"))
        .and(path("/events"))
        .and(query_param("sort_order", "asc"))
        .and(query_param("limit", "15"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "_pagination": {"next": null}, "_links": {},
            "_results": [json_fixture("event_tag.json", None), json_fixture("event_tag.json", None)]
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_yo1kg5q"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json_fixture("conversations_page1.json", Some("x"))["_results"][0].clone(),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let cs = StreamId::from(streams::CONVERSATIONS);
    let events_cursor = ConversationsCursor::Events(
        apex_connect_frontapp::cursor::EventsPosition::after(Some(1_703_102_000_000)),
    )
    .to_token();
    let p = front.read(&cs, Some(&events_cursor)).await.unwrap();
    assert_eq!(p.records.len(), 1);
    assert_eq!(p.records[0].op, Op::Upsert);
    assert!(!p.has_more);
    let next = ConversationsCursor::from_token(p.next.as_ref().unwrap()).unwrap();
    match next {
        ConversationsCursor::Events(pos) => assert_eq!(pos.after_ms, Some(1_703_102_616_250)),
        other => panic!("{other:?}"),
    }
    let events_req = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.url.path() == "/events")
        .unwrap();
    let q: Vec<(String, String)> = events_req
        .url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    assert!(
        q.contains(&("q[after]".into(), "1703101940.000".into())),
        "after minus 60 s lookback: {q:?}"
    );
}

#[tokio::test]
async fn cursor_of_unknown_version_is_a_clear_error() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    let front = connector(&server);
    let token = ConversationsCursor::Backfill(ListPosition::new(None, 0)).to_token();
    let v9 = CursorToken::from_string(token.as_str().replace(".v1.", ".v9."));
    let e = front
        .read(&StreamId::from(streams::CONVERSATIONS), Some(&v9))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("newer version"), "{e}");
    let e = front
        .read(&StreamId::from("deals"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[test]
fn builder_refuses_bad_config() {
    let e = FrontConnector::builder().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = FrontConnector::builder()
        .api_token(SecretString::from("t"))
        .base_url("ftp://x")
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let e = FrontConnector::builder()
        .api_token(SecretString::from("t"))
        .page_size(0)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    let ok = FrontConnector::builder()
        .api_token(SecretString::from("tok-abc-secret"))
        .build()
        .unwrap();
    assert_eq!(ok.config().base_url, "https://api2.frontapp.com");
    assert!(!format!("{ok:?}").contains("tok-abc-secret"));
}
