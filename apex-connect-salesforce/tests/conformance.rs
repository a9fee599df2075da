//! The shared conformance suite against the Salesforce simulator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apex_connect_core::{
    ConnectionId, Connector, MemoryTokenStore, StreamId, WriteAction, WriteOp, async_trait,
};
use apex_connect_salesforce::{SalesforceSim, SalesforceSimConfig};
use apex_connect_testkit::conformance::{ConformanceFixture, SignedWebhook};
use apex_connect_testkit::sim::FaultKind;
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::json;

struct Fixture {
    sim: SalesforceSim,
    store: Arc<MemoryTokenStore>,
    /// Whether `signed_webhook` gives Outbound Messages (see `webhook_behaviours` below).
    webhooks: bool,
}

async fn fixture() -> Fixture {
    // Enough Accounts to go through Bulk API 2.0 (4 result pages), enough Contacts for 3
    // REST pages of 200.
    let config = SalesforceSimConfig::default()
        .count("Account", 500)
        .count("Contact", 450);
    let sim = SalesforceSim::start(config).await.expect("simulator");
    Fixture {
        sim,
        store: Arc::new(MemoryTokenStore::new()),
        webhooks: false,
    }
}

#[async_trait]
impl ConformanceFixture for Fixture {
    async fn connector(&self) -> Arc<dyn Connector> {
        self.sim
            .connector(
                &ConnectionId::from("conformance"),
                self.store.clone(),
                json!({"query_batch_size": 200, "bulk_threshold": 480, "bulk_page_records": 150}),
            )
            .await
            .expect("connector")
    }

    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>> {
        self.sim.expected(stream.as_str())
    }

    async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
        self.sim
            .faults()
            .push_scheduled(FaultKind::TooManyRequests { retry_after });
        Some(())
    }

    async fn rate_limited_seen(&self) -> Option<u64> {
        Some(
            self.sim
                .faults()
                .counts()
                .by_status
                .get(&429)
                .copied()
                .unwrap_or(0),
        )
    }

    async fn inject_unauthorized_once(&self) -> Option<()> {
        self.sim.unauthorized_once();
        Some(())
    }

    async fn token_refreshes(&self) -> Option<u64> {
        Some(self.sim.oauth().stats().refresh_token)
    }

    /// Outbound Messages carry no signature over the body or a timestamp (Salesforce signs
    /// neither): the tampered-body and stale-timestamp behaviours do not apply, so the macro's
    /// run gets no signed webhook; `webhook_behaviours` runs the ones that apply.
    async fn signed_webhook(&self, _now: SystemTime) -> Option<SignedWebhook> {
        if !self.webhooks {
            return None;
        }
        let ids = ["001000000000003AAA".to_string()];
        let body = self.sim.outbound_body("Account", &ids).ok()?;
        let uri: Uri = "/webhooks/salesforce/conformance?secret=sim-outbound-secret"
            .parse()
            .ok()?;
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        h.insert("soapaction", HeaderValue::from_static("\"\""));
        Some((Method::POST, uri, h, body.into_bytes()))
    }

    fn webhook_timestamped(&self) -> bool {
        false
    }

    async fn secrets(&self) -> Option<Vec<String>> {
        let mut s = vec![
            self.sim.config().client_secret.clone(),
            "sim-outbound-secret".to_string(),
        ];
        if let Some(rt) = self.sim.oauth().latest_refresh_token() {
            s.push(rt);
        }
        if let Ok(Some(t)) = apex_connect_core::TokenStore::load(
            self.store.as_ref(),
            &ConnectionId::from("conformance"),
        )
        .await
        {
            s.push(secrecy::ExposeSecret::expose_secret(&t.value.access_token).to_string());
        }
        Some(s)
    }

    async fn write_ops(&self, stream: &StreamId) -> Option<Vec<WriteOp>> {
        (stream.as_str() == "Account").then(|| {
            vec![
                WriteOp::new(WriteAction::Create, None, json!({"Name": "New Co"}))
                    .with_key("create"),
                WriteOp::new(
                    WriteAction::Update,
                    Some("001000000000002AAA".into()),
                    json!({"Industry": "Energy"}),
                )
                .with_key("update"),
                WriteOp::new(
                    WriteAction::Delete,
                    Some("001000000000003AAA".into()),
                    json!(null),
                )
                .with_key("delete"),
            ]
        })
    }

    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        self.sim.inject_hostile(stream.as_str(), seed, 12).ok()
    }
}

apex_connect_testkit::conformance!(fixture);

/// The webhook behaviours that apply to Outbound Messages, with a fixture that sends them.
mod webhook_behaviours {
    use super::*;
    use apex_connect_testkit::conformance::{
        report, webhook_missing_signature_rejected, webhook_verifies,
    };

    async fn with_webhooks() -> Fixture {
        let mut f = fixture().await;
        f.webhooks = true;
        f
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbound_message_verifies_and_parses() {
        report(
            "webhook_verifies",
            webhook_verifies(&with_webhooks().await).await,
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outbound_message_without_headers_is_refused() {
        report(
            "webhook_missing_signature_rejected",
            webhook_missing_signature_rejected(&with_webhooks().await).await,
        );
    }
}
