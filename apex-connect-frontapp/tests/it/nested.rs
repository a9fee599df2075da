//! Issue 8, nested walks (messages and comments per conversation): a read returns what it
//! fetched with a cursor that resumes exactly there; a failure after records were fetched
//! never discards them; one read never follows `next` links at two levels; link cycles and
//! oversized pages are errors, not loops or memory spikes.

use apex_connect_core::{Connector, ConnectorExt, ErrorKind, Page, StreamId};
use apex_connect_frontapp::streams;
use futures::StreamExt;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{catch_all, company_url, connector, fast_retry};

fn list(results: Vec<Value>, next: Option<String>) -> Value {
    json!({"_pagination": {"next": next}, "_links": {"self": "x"}, "_results": results})
}

fn conversation(id: &str) -> Value {
    json!({"id": id, "subject": format!("About {id}"), "status": "open", "updated_at": 1701292649.5})
}

fn message(id: &str, at: f64) -> Value {
    json!({"id": id, "created_at": at, "text": format!("text of {id}"),
           "attachments": [{"id": "fil_1", "filename": "a.pdf", "size": -39484462}]})
}

fn ids(page: &Page) -> Vec<&str> {
    page.records.iter().map(|r| r.id.as_str()).collect()
}

async fn mount_conversations(server: &MockServer, results: Vec<Value>, next: Option<String>) {
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(results, next)))
        .expect(1)
        .with_priority(5)
        .mount(server)
        .await;
}

async fn requests_since(server: &MockServer, before: usize) -> Vec<String> {
    server.received_requests().await.unwrap()[before..]
        .iter()
        .map(|r| match r.url.query() {
            Some(q) => format!("{}?{q}", r.url.path()),
            None => r.url.path().to_string(),
        })
        .collect()
}

/// A conversation whose messages fail (500) after an earlier one's were fetched: the read
/// returns those, with a cursor at the failing conversation; the next read makes the request
/// again and the failure surfaces there; once it recovers, the walk ends with every message
/// exactly once, and the conversations list was read once.
#[tokio::test]
async fn a_failure_after_records_returns_them_and_resumes_there() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    mount_conversations(
        &server,
        vec![
            conversation("cnv_1"),
            conversation("cnv_2"),
            conversation("cnv_3"),
        ],
        None,
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(
            vec![message("msg_1a", 1.0), message("msg_1b", 2.0)],
            None,
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_2/messages"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"_error": {"status": 500, "title": "Server error"}})),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_2/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![message("msg_2a", 3.0)], None)),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_3/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![message("msg_3a", 4.0)], None)),
        )
        .mount(&server)
        .await;
    let mut retry = fast_retry();
    retry.max_attempts = 1;
    let front = apex_connect_frontapp::FrontConnector::builder()
        .base_url(server.uri())
        .api_token(secrecy::SecretString::from(super::TOKEN))
        .retry(retry)
        .build()
        .unwrap();
    let s = StreamId::from(streams::MESSAGES);

    let p1 = front.read(&s, None).await.unwrap();
    assert_eq!(ids(&p1), ["msg_1a", "msg_1b"], "fetched records are kept");
    assert!(p1.has_more);
    let e = front.read(&s, p1.next.as_ref()).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Upstream,
        "the failure surfaces on the next read"
    );
    let p3 = front.read(&s, p1.next.as_ref()).await.unwrap();
    assert_eq!(
        ids(&p3),
        ["msg_2a", "msg_3a"],
        "resumes exactly at the failed request"
    );
    assert!(!p3.has_more);
    for r in &p3.records {
        assert!(front.map_entity(r).unwrap().is_some(), "negative sizes map");
    }
    // `.expect(1)` on the conversations list and on cnv_1's messages: checked on drop.
}

/// One read never follows `next` links at two levels: the read that follows the
/// conversations page's `next` link stops before a conversation's messages `next` link,
/// which the following read follows (and no conversations page then).
#[tokio::test]
async fn one_read_follows_links_at_one_level() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    let page2 = company_url(&server, "/conversations?limit=100&page_token=p2");
    let m2 = company_url(
        &server,
        "/conversations/cnv_5/messages?limit=100&page_token=m2",
    );
    Mock::given(method("GET"))
        .and(path("/conversations"))
        .and(query_param("page_token", "p2"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![conversation("cnv_5")], None)),
        )
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_conversations(&server, vec![conversation("cnv_1")], Some(page2)).await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_1/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![message("msg_1", 1.0)], None)),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_5/messages"))
        .and(query_param("page_token", "m2"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![message("msg_5b", 3.0)], None)),
        )
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_5/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(list(vec![message("msg_5a", 2.0)], Some(m2.clone()))),
        )
        .expect(1)
        .with_priority(2)
        .mount(&server)
        .await;
    let front = connector(&server);
    let s = StreamId::from(streams::MESSAGES);

    let p1 = front.read(&s, None).await.unwrap();
    assert_eq!(ids(&p1), ["msg_1"]);
    let before = server.received_requests().await.unwrap().len();
    let p2 = front.read(&s, p1.next.as_ref()).await.unwrap();
    assert_eq!(ids(&p2), ["msg_5a"]);
    assert!(p2.has_more);
    assert_eq!(
        requests_since(&server, before).await,
        [
            "/conversations?limit=100&page_token=p2",
            "/conversations/cnv_5/messages?limit=100"
        ],
        "the conversations link, then first pages only"
    );
    let before = server.received_requests().await.unwrap().len();
    let p3 = front.read(&s, p2.next.as_ref()).await.unwrap();
    assert_eq!(ids(&p3), ["msg_5b"]);
    assert!(!p3.has_more);
    assert_eq!(
        requests_since(&server, before).await,
        ["/conversations/cnv_5/messages?limit=100&page_token=m2"],
        "the messages link only"
    );
}

/// `next` links of a conversation's messages that go round in a circle (A -> B -> A) end
/// the walk with an error after a bounded number of requests, and the records read before
/// the cycle was seen are returned first.
#[tokio::test]
async fn a_cycle_in_children_links_is_an_error_not_a_loop() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    mount_conversations(&server, vec![conversation("cnv_1")], None).await;
    let link = |t: &str| {
        company_url(
            &server,
            &format!("/conversations/cnv_1/messages?limit=100&page_token={t}"),
        )
    };
    for (token, msg, next) in [("b", "msg_b", "c"), ("c", "msg_c", "b")] {
        Mock::given(method("GET"))
            .and(path("/conversations/cnv_1/messages"))
            .and(query_param("page_token", token))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(list(vec![message(msg, 2.0)], Some(link(next)))),
            )
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_1/messages"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(list(vec![message("msg_a", 1.0)], Some(link("b")))),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    let front = connector(&server);
    let s = StreamId::from(streams::MESSAGES);
    let mut pages = front.read_all(&s, None);
    let mut got = Vec::new();
    let mut error = None;
    while let Some(page) = pages.next().await {
        match page {
            Ok(p) => got.extend(p.records.into_iter().map(|r| r.id)),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let e = error.expect("a cycle ends the walk with an error");
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");
    assert!(e.to_string().contains("cycle"), "{e}");
    assert_eq!(&got[..3], ["msg_a", "msg_b", "msg_c"]);
    let requests = server.received_requests().await.unwrap().len();
    assert!(requests <= 10, "bounded: {requests} requests");
}

/// A page holding far more results than the `limit` asked for (a 1 MB page of tiny objects
/// where 100 were asked for) is an error, not a memory spike; so is a conversation's messages
/// page, and the page before it is kept.
#[tokio::test]
async fn pages_far_larger_than_the_limit_are_errors() {
    let server = MockServer::start().await;
    catch_all(&server).await;
    let tiny: Vec<Value> = (0..60_000)
        .map(|i| json!({"id": format!("t{i}")}))
        .collect();
    Mock::given(method("GET"))
        .and(path("/tags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(tiny.clone(), None)))
        .mount(&server)
        .await;
    mount_conversations(
        &server,
        vec![conversation("cnv_1"), conversation("cnv_2")],
        None,
    )
    .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_1/messages"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![message("msg_1", 1.0)], None)),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/conversations/cnv_2/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(tiny, None)))
        .mount(&server)
        .await;
    let front = connector(&server);
    let e = front
        .read(&StreamId::from(streams::TAGS), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(!e.is_temporary());
    assert_eq!(e.context_value("results"), Some("60000"));
    assert_eq!(e.context_value("limit"), Some("100"));

    let s = StreamId::from(streams::MESSAGES);
    let p = front.read(&s, None).await.unwrap();
    assert_eq!(ids(&p), ["msg_1"]);
    let e = front.read(&s, p.next.as_ref()).await.unwrap_err();
    assert_eq!(e.context_value("results"), Some("60000"));
}
