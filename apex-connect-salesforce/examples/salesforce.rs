//! The Salesforce connector on its simulator: OAuth connect (authorization code + PKCE), a
//! backfill, an incremental sync, and an Outbound Message through a webhook receiver.
//!
//! ```text
//! cargo run --release -p apex-connect-salesforce --features sim --example salesforce
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use apex_connect_core::oauth::{CallbackParams, OAuthClient};
use apex_connect_core::platform::{AuthInputs, oauth_config, resolve_auth};
use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{
    BuildContext, ConnectionId, Connector, MemorySink, MemoryStore, MemoryTokenStore, Platform,
    StateStore, StreamId, SyncEngine, SyncOptions, TokenStore, VerifiedWebhook,
};
use apex_connect_salesforce::{PLATFORM, SalesforceSim, SalesforceSimConfig};
use axum::body::Bytes;
use axum::extract::State;
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::json;

type Inbox = Arc<Mutex<Vec<(String, VerifiedWebhook)>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sim = SalesforceSim::start(
        SalesforceSimConfig::default()
            .count("Account", 5_000)
            .count("Contact", 8_000),
    )
    .await?;
    println!(
        "simulator: login host {}, instance {}",
        sim.login_url(),
        sim.instance_url()
    );

    // 1. Connect: authorization code with PKCE and state, as `apex-connect connect` does.
    let conn = ConnectionId::from("acme-salesforce");
    let mut settings = sim.settings();
    settings.insert(
        "objects",
        json!(["Account", "Contact", "Opportunity", "Task"]),
    );
    let secrets = sim.secrets("outbound-endpoint-secret");
    let config = oauth_config(&PLATFORM, &settings, &secrets)?
        .ok_or("no OAuth configuration")?
        .with_redirect_url("http://127.0.0.1:9/callback");
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let client = OAuthClient::new(config, no_redirects.clone())?;
    let req = client.authorize_url()?;
    let consent = no_redirects.get(req.url.clone()).send().await?;
    let back = url::Url::parse(consent.headers()["location"].to_str()?)?;
    let param = |k: &str| {
        back.query_pairs()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let tokens = client
        .exchange_code(
            &CallbackParams::new(param("code"), param("state")),
            &req.state,
            &req.pkce_verifier,
        )
        .await?;
    println!(
        "connected: instance_url {:?}, signed identity: {}",
        tokens.instance_url,
        tokens.identity.is_some()
    );
    let token_store = Arc::new(MemoryTokenStore::new());
    token_store.save(&conn, &tokens, None).await?;
    let auth = resolve_auth(
        &PLATFORM,
        &settings,
        AuthInputs::new(&conn, &secrets, token_store.clone()).tokens_stored(true),
    )?;
    let connector = PLATFORM.build(&BuildContext::new(&conn, &settings, &secrets, auth))?;

    // 2. Backfill every stream into a sink that keeps records and entities.
    let state = Arc::new(MemoryStore::new());
    let engine = SyncEngine::new(state.clone() as Arc<dyn StateStore>);
    let sink = MemorySink::with_entities();
    for s in ["Account", "Contact", "Opportunity", "Task"] {
        let t = Instant::now();
        let r = engine
            .run(
                connector.as_ref(),
                &conn,
                &StreamId::from(s),
                &sink,
                SyncOptions::new(),
            )
            .await?;
        println!(
            "backfill {s:<12} {:>6} records in {:>4} pages, {:?}",
            r.records_read,
            r.pages,
            t.elapsed()
        );
    }
    let acc = sink
        .entity(&conn, &StreamId::from("Contact"), "003000000000004AAA")
        .ok_or("no contact")?;
    println!(
        "a contact entity: {} -> {:?}",
        acc.name.unwrap_or_default(),
        acc.relations
            .iter()
            .map(|r| format!("{} {}", r.kind, r.target.object_type))
            .collect::<Vec<_>>()
    );

    // 3. Changes at the source; the incremental sync reads only them (and the delete).
    let edited = sim.touch_range("Account", 100..150)?;
    sim.delete("Account", "001000000000007AAA")?;
    sim.oauth().expire_access_tokens(); // the session expired meanwhile: 401, one refresh
    let before = sim.api_calls();
    let r = engine
        .run(
            connector.as_ref(),
            &conn,
            &StreamId::from("Account"),
            &sink,
            SyncOptions::new(),
        )
        .await?;
    println!(
        "incremental Account: {} records ({} edited + lookback + 1 delete), {} API calls, refreshes {}",
        r.records_read,
        edited.len(),
        sim.api_calls() - before,
        sim.oauth().stats().refresh_token
    );

    // 4. Write back, then an Outbound Message to a webhook receiver (verify, split, Ack).
    let report = connector
        .write(
            &StreamId::from("Opportunity"),
            vec![apex_connect_core::WriteOp::new(
                apex_connect_core::WriteAction::Update,
                Some("006000000000002AAA".into()),
                json!({"StageName": "Closed Won"}),
            )],
        )
        .await?;
    println!(
        "write-back: {} of {} written",
        report.succeeded(),
        report.results.len()
    );
    let inbox: Inbox = Arc::default();
    let app = axum::Router::new()
        .route("/webhooks/salesforce/{conn}", axum::routing::post(receive))
        .with_state((connector.clone(), inbox.clone()));
    let receiver = apex_connect_testkit::sim::SimServer::start(app).await?;
    let url = format!(
        "{}/webhooks/salesforce/acme-salesforce?secret=outbound-endpoint-secret",
        receiver.base_url()
    );
    sim.update(
        "Opportunity",
        "006000000000001AAA",
        json!({"StageName": "Negotiation/Review"}),
    )?;
    let ids = vec![
        "006000000000001AAA".to_string(),
        "006000000000002AAA".to_string(),
    ];
    let delivery = sim.send_outbound(&url, "Opportunity", &ids).await?;
    println!(
        "outbound message: HTTP {}, acknowledged: {}",
        delivery.status,
        String::from_utf8_lossy(&delivery.body).contains("<Ack>true</Ack>")
    );
    let stored: Vec<VerifiedWebhook> = inbox
        .lock()
        .map_err(|_| "poisoned")?
        .iter()
        .map(|(_, w)| w.clone())
        .collect();
    let hooks = connector.webhooks().ok_or("no webhooks")?;
    for (i, result) in hooks.parse_batch(&stored).await.into_iter().enumerate() {
        let changes = result?;
        println!(
            "  event {i}: {:?}",
            changes
                .iter()
                .map(|c| format!("{} {} {:?}", c.stream, c.id, c.op))
                .collect::<Vec<_>>()
        );
    }
    println!("  (the echo of our own write to 006000000000002AAA is dropped)");
    Ok(())
}

async fn receive(
    State((connector, inbox)): State<(Arc<dyn Connector>, Inbox)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let Some(hooks) = connector.webhooks() else {
        return (StatusCode::NOT_FOUND, Vec::new());
    };
    let now = SystemTime::now();
    let Ok(verified) = hooks
        .verifier()
        .verify(&WebhookRequest::new(&method, &uri, &headers, &body), now)
    else {
        return (StatusCode::UNAUTHORIZED, Vec::new());
    };
    let Ok(events) = hooks.events(&verified, &body) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    if let Ok(mut inbox) = inbox.lock() {
        for e in events {
            if !inbox.iter().any(|(id, _)| *id == e.id) {
                inbox.push((
                    e.id,
                    VerifiedWebhook::new(verified.clone(), headers.clone(), e.body, now),
                ));
            }
        }
    }
    match hooks.accepted_reply(&verified, &body) {
        Some(r) => (StatusCode::OK, r.body.to_vec()),
        None => (StatusCode::OK, Vec::new()),
    }
}
