use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_core::store::{Clock, EncryptionKey, StateStore};
use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{Connector, Op, SqliteStore, StreamId};
use apex_connect_server::{ServerState, admin_router, webhook_router};
use apex_connect_testkit::MemoryConnector;
use http::{HeaderMap, HeaderValue, Method, Uri};

pub const SECRET: &[u8] = b"it-secret";

/// A clock the test moves by hand, starting at a fixed time.
#[derive(Clone)]
pub struct ManualClock(pub Arc<AtomicI64>);

impl ManualClock {
    pub fn new() -> Self {
        ManualClock(Arc::new(AtomicI64::new(1_700_000_000_000)))
    }
    pub fn clock(&self) -> Clock {
        let t = self.0.clone();
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_millis(t.load(Ordering::SeqCst) as u64))
    }
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst) as u64)
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

pub async fn sqlite(dir: &std::path::Path, clock: &ManualClock) -> SqliteStore {
    SqliteStore::open(dir.join("state.db"), EncryptionKey::from_bytes([7; 32]))
        .await
        .unwrap()
        .with_clock(clock.clock())
}

pub fn dyn_store(s: &SqliteStore) -> Arc<dyn StateStore> {
    Arc::new(s.clone())
}

pub fn memory() -> MemoryConnector {
    MemoryConnector::new(["items"], 10, SECRET)
}

/// A memory webhook for `item` with `msg_id`, signed by `connector` at `now`.
pub fn signed(
    connector: &dyn Connector,
    msg_id: &str,
    item: &str,
    op: Op,
    now: SystemTime,
) -> (HeaderMap, Vec<u8>) {
    let body = MemoryConnector::webhook_body(&StreamId::from("items"), item, op);
    let mut h = HeaderMap::new();
    h.insert("webhook-id", HeaderValue::from_str(msg_id).unwrap());
    let (m, u) = (Method::POST, Uri::from_static("/"));
    let mut headers = connector
        .webhooks()
        .unwrap()
        .verifier()
        .sign(&WebhookRequest::new(&m, &u, &h, &body), now)
        .unwrap();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, body)
}

/// Serves the webhook and admin routers on a loopback port; returns the base URL.
pub async fn serve(state: ServerState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = webhook_router(state.clone()).merge(admin_router(state));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}
