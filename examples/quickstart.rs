//! The quickstart: sync a FrontApp account into a SQLite file.
//!
//! ```sh
//! cargo run --release --example quickstart                       # against the simulator
//! FRONT_API_TOKEN=... cargo run --release --example quickstart   # against your Front account
//! ```
//!
//! Without credentials it starts the Front simulator on 127.0.0.1, connects through the OAuth
//! flow (state + PKCE, HTTP Basic client auth, tokens encrypted in SQLite), syncs a realistic
//! account with a progress bar, changes a few things on the simulator, shows the incremental
//! sync picking them up, takes a signed webhook, and prints a summary.
//!
//! With `FRONT_API_TOKEN` (and optionally `FRONT_BASE_URL`) the same code syncs a real Front
//! company: only the base URL and the credentials differ. The database path is
//! `APEX_CONNECT_DB` (default `apex-connect-quickstart.db`); tokens stored by OAuth are
//! encrypted with `APEX_CONNECT_KEY` (base64, 32 bytes) when set, else with a key made for
//! this run.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apex_connect::engine::{SyncEngine, SyncOptions, SyncReport};
use apex_connect::frontapp::FrontConnector;
use apex_connect::frontapp::sim::{FrontSim, FrontSimConfig, FrontSimHandle};
use apex_connect::server::{self, ConnectionHandle, ServerState, WorkerConfig, Workers};
use apex_connect::sinks::SqliteSink;
use apex_connect::store::prelude::*;
use apex_connect::store::{Connection, EncryptionKey, SqliteStore};
use apex_connect::{ConnectionId, Connector, StreamId, TokenStore};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The streams synced, in dependency order (tags and people before conversations).
const STREAMS: [&str; 7] = [
    "tags",
    "teammates",
    "inboxes",
    "contacts",
    "conversations",
    "messages",
    "comments",
];

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let started = Instant::now();
    let db =
        std::env::var("APEX_CONNECT_DB").unwrap_or_else(|_| "apex-connect-quickstart.db".into());
    let real_token = std::env::var("FRONT_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let connection = ConnectionId::from("front");

    // In simulator mode every run starts from a fresh database: the simulator is new too.
    if real_token.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{db}{suffix}"));
        }
    }
    let key = match EncryptionKey::from_env() {
        Ok(key) => key,
        Err(_) => EncryptionKey::generate(),
    };
    let store = Arc::new(SqliteStore::open(&db, key).await?);
    let sink = SqliteSink::for_store(&store);
    let engine = SyncEngine::new(store.clone() as Arc<dyn StateStore>);

    let (connector, sim) = match &real_token {
        Some(token) => {
            let base = std::env::var("FRONT_BASE_URL")
                .unwrap_or_else(|_| apex_connect::frontapp::config::DEFAULT_BASE_URL.into());
            println!("== Connecting to Front at {base} with FRONT_API_TOKEN");
            let connector = FrontConnector::builder()
                .api_token(SecretString::from(token.clone()))
                .base_url(base)
                .build()?;
            (connector, None)
        }
        None => {
            let (connector, sim) = connect_to_simulator(store.clone(), &connection).await?;
            (connector, Some(sim))
        }
    };
    store
        .upsert_connection(&Connection::new(
            connection.clone(),
            apex_connect::frontapp::NAME,
            serde_json::json!({ "base_url": connector.config().base_url }),
        ))
        .await?;
    connector.check().await?;

    println!("\n== Full sync into {db}");
    let mut full = Vec::new();
    for stream in STREAMS {
        let expected = sim.as_ref().map(|s| s.count(stream));
        full.push(sync_stream(&engine, &connector, &connection, stream, &sink, expected).await?);
    }

    if let Some(sim) = &sim {
        println!(
            "\n== Changes on the simulator: 20 conversations touched, 30 new messages, 5 tags added"
        );
        for i in 0..20 {
            sim.touch_conversation(&sim.conversation_id(i * 7))?;
        }
        for i in 0..30 {
            sim.add_message(
                &sim.conversation_id(i * 11),
                "Any update on my order?",
                true,
            )?;
        }
        for i in 0..5 {
            sim.tag(&sim.conversation_id(i * 13), &sim.tag_id(i))?;
        }
    }

    println!("\n== Incremental sync (from the stored cursors)");
    let mut incremental = Vec::new();
    for stream in STREAMS {
        incremental.push(sync_stream(&engine, &connector, &connection, stream, &sink, None).await?);
    }

    if let Some(sim) = &sim {
        println!("\n== A signed webhook through the receiver, the durable inbox and a worker");
        take_webhook(sim, &connector, &store, &connection, &sink).await?;
    }

    // Summary.
    let stats = connector.http_stats();
    println!("\n== Summary");
    println!(
        "{:<14} {:>10} {:>10} {:>9} {:>12} {:>10}",
        "stream", "full", "applied", "time", "incremental", "applied"
    );
    for ((stream, f), i) in STREAMS.iter().zip(&full).zip(&incremental) {
        println!(
            "{:<14} {:>10} {:>10} {:>8.2}s {:>12} {:>10}",
            stream,
            f.records_read,
            f.applied,
            f.elapsed.as_secs_f64(),
            i.records_read,
            i.applied
        );
    }
    let total: u64 = full.iter().map(|r| r.records_read).sum();
    let sync_secs: f64 = full.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    println!(
        "full sync: {total} records in {sync_secs:.2}s ({:.0} records/s)",
        total as f64 / sync_secs.max(1e-9)
    );
    println!(
        "requests: {} sent, {} retried, 429s seen: {}, time waited on the rate gate (summed over concurrent requests): {:.2}s",
        stats.requests_sent,
        stats.retries,
        stats.rate_limited,
        stats.gate_wait.as_secs_f64()
    );
    println!("cursors saved in {db}:");
    for stream in STREAMS {
        if let Some(c) = store
            .load_cursor(&connection, &StreamId::new(stream))
            .await?
        {
            let kind = c.value.kind().unwrap_or("?").to_string();
            println!("  {stream:<14} {kind} (version {})", c.version);
        }
    }
    if let Some(sim) = &sim {
        let tokens = TokenStore::load(store.as_ref(), &connection).await?;
        println!(
            "OAuth tokens: stored encrypted (version {}); token endpoint calls: {}",
            tokens.map_or(0, |t| t.version),
            sim.oauth().stats().token_requests
        );
    }
    println!("total time: {:.2}s", started.elapsed().as_secs_f64());
    store.close().await;
    Ok(())
}

/// Starts the simulator and connects to it exactly as a host connects to Front: OAuth
/// authorize URL with state + PKCE, the admin's consent, the code exchange, tokens saved
/// (encrypted) through the store.
async fn connect_to_simulator(
    store: Arc<SqliteStore>,
    connection: &ConnectionId,
) -> Result<(FrontConnector, FrontSimHandle), BoxError> {
    let sim = FrontSim::start(
        FrontSimConfig::realistic()
            .size(3_000, 5)
            .contacts(2_000)
            .tags(40)
            .rate_limit(6_000, Duration::from_secs(10)),
    )
    .await?;
    println!(
        "== Front simulator on {} (rate limit: 6,000 requests per 10 s window, with Front's headers)",
        sim.base_url()
    );
    println!(
        "== OAuth: authorize (state + PKCE) -> consent -> code exchange (HTTP Basic) -> encrypted token store"
    );
    let manager = sim
        .oauth_connect(store as Arc<dyn TokenStore>, connection.clone())
        .await?;
    let connector = FrontConnector::builder()
        .oauth(manager)
        .base_url(sim.base_url())
        .webhook_secret(sim.webhook_secret())
        .build()?;
    Ok((connector, sim))
}

async fn sync_stream(
    engine: &SyncEngine,
    connector: &FrontConnector,
    connection: &ConnectionId,
    stream: &str,
    sink: &SqliteSink,
    expected: Option<u64>,
) -> Result<SyncReport, BoxError> {
    let bar = match expected {
        Some(n) => ProgressBar::new(n).with_style(ProgressStyle::with_template(
            "{prefix:>14} [{bar:40}] {pos}/{len} {per_sec} {msg}",
        )?),
        None => ProgressBar::new_spinner().with_style(ProgressStyle::with_template(
            "{prefix:>14} {spinner} {pos} records {per_sec} {msg}",
        )?),
    };
    bar.set_prefix(stream.to_string());
    let progress_bar = bar.clone();
    let options = SyncOptions::new().progress(move |p| progress_bar.set_position(p.records_read));
    let report = engine
        .run(
            connector,
            connection,
            &StreamId::new(stream.to_string()),
            sink,
            options,
        )
        .await?;
    bar.set_position(report.records_read);
    let line = format!(
        "{} applied, {} unchanged, {} pages, {:.2}s",
        report.applied,
        report.unchanged,
        report.pages,
        report.elapsed.as_secs_f64()
    );
    if bar.is_hidden() {
        // Not a terminal (CI, a pipe): one plain line per stream instead of the bar.
        println!("{stream:>14}: {} records, {line}", report.records_read);
    }
    bar.finish_with_message(line);
    Ok(report)
}

/// The webhook path of a running service: the receiver (`apex_connect::server::webhook_router`)
/// listens on 127.0.0.1; the simulator answers Front's validation challenge and then POSTs a
/// signed application webhook for a new inbound message; the receiver verifies the signature on
/// the raw bytes and appends the event to the durable inbox (200), refuses a forged one (401),
/// and a worker claims the event, fetches the objects it names and writes them to the sink.
async fn take_webhook(
    sim: &FrontSimHandle,
    connector: &FrontConnector,
    store: &Arc<SqliteStore>,
    connection: &ConnectionId,
    sink: &SqliteSink,
) -> Result<(), BoxError> {
    let state = ServerState::builder(store.clone() as Arc<dyn StateStore>)
        .connection(ConnectionHandle::new(
            connection.clone(),
            Arc::new(connector.clone()) as Arc<dyn Connector>,
        ))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://{}/webhooks/{}/{connection}",
        listener.local_addr()?,
        apex_connect::frontapp::NAME
    );
    let app = server::webhook_router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("receiver listening: POST {url}");

    let challenge = sim
        .send_sync_challenge(&url, "quickstart-challenge")
        .await?;
    println!(
        "Front's validation request (x-front-challenge): {} {}",
        challenge.status,
        String::from_utf8_lossy(&challenge.body)
    );

    let conversation = sim.conversation_id(3);
    let conversations = StreamId::from("conversations");
    let version_of = |records: Vec<apex_connect::Record>| {
        records
            .into_iter()
            .find(|r| r.id == conversation)
            .and_then(|r| r.version)
    };
    let before = version_of(sink.records(connection, &conversations).await?);
    sim.add_message(&conversation, "Thanks, that solved it!", true)?;
    let event = sim.latest_event_id().ok_or("the simulator has no event")?;
    let delivery = sim.send_webhook(&url, &event).await?;
    println!(
        "signed webhook {event} (new inbound message on {conversation}): {}",
        delivery.status
    );

    let forged = reqwest::Client::new()
        .post(&url)
        .header("x-front-signature", "Zm9yZ2Vk")
        .header(
            "x-front-request-timestamp",
            apex_connect::webhook::unix_ms(SystemTime::now()).to_string(),
        )
        .body(sim.webhook_body(&event)?)
        .send()
        .await?;
    println!("the same body with a forged signature: {}", forged.status());

    let received = Instant::now();
    let workers = Workers::new(state, Arc::new(sink.clone()), WorkerConfig::default());
    let processed = workers.run_once("quickstart").await?;
    let after = version_of(sink.records(connection, &conversations).await?);
    println!(
        "worker processed {processed} inbox event(s) in {:.1} ms; conversation {conversation} version {} -> {}",
        received.elapsed().as_secs_f64() * 1000.0,
        before.map_or("none".into(), |v| v.to_string()),
        after.map_or("none".into(), |v| v.to_string()),
    );
    let counts = store.inbox_counts().await?;
    println!(
        "inbox: {} done, {} pending, {} dead letters",
        counts.done, counts.pending, counts.dead
    );
    Ok(())
}
