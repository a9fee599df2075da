//! Response times of the dashboard and the admin API at scale: 50 connections, 100,000 runs
//! (spread over 30 days), 1,000,000 inbox rows (1,000 of them dead letters), 200,000 run log
//! lines, in a SQLite state database. Every page, fragment and action is requested in turn
//! over loopback with a signed-in session; prints p50 / p95 / max per route.
//!
//! `cargo run --release -p apex-connect-server --example dashboard_bench [-- ROUNDS]`
//!
//! The data is written with SQL in a few transactions (the store's own calls would take
//! minutes for a million rows and give the same tables); everything measured goes through
//! the service's code. Server and client share this process and the machine's cores.

use std::sync::Arc;
use std::time::Instant;

use apex_connect_core::SqliteStore;
use apex_connect_core::store::prelude::*;
use apex_connect_core::store::{Connection, EncryptionKey, ScheduleEntry};
use apex_connect_core::{ConnectionId, Error, NullSink, Result};
use apex_connect_server::{AdminAuth, ConnectionHandle, Dashboard, ServerState, admin_router};
use apex_connect_testkit::MemoryConnector;
use secrecy::SecretString;

const CONNECTIONS: usize = 50;
const RUNS: usize = 100_000;
const INBOX: usize = 1_000_000;
const DEAD: usize = 1_000;
const LOGGED_RUNS: usize = 1_000;
const LINES_PER_RUN: usize = 200;
const TOKEN: &str = "bench-admin-token-0123456789";

fn e(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |err| Error::storage(what).set_source(err)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn seed(path: &std::path::Path, now: i64) -> Result<()> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .map_err(e("connect"))?;
    let mut tx = pool.begin().await.map_err(e("begin"))?;
    let day = 86_400_000i64;
    for i in 0..RUNS {
        let c = format!("conn-{:02}", i % CONNECTIONS);
        let started = now - (i as i64 * 30 * day / RUNS as i64);
        let failed = i % 17 == 0;
        sqlx::query(
            "INSERT INTO sync_runs (connection, stream, kind, status, started_at, finished_at, \
             records_read, records_applied, records_unchanged, pages, error) \
             VALUES (?, 'items', 'incremental', ?, ?, ?, ?, ?, 0, ?, ?)",
        )
        .bind(&c)
        .bind(if failed { "failed" } else { "succeeded" })
        .bind(started)
        .bind(started + 1_500)
        .bind((i % 500) as i64)
        .bind((i % 480) as i64)
        .bind((i % 5) as i64 + 1)
        .bind(failed.then_some("platform answered 503 (temporary)"))
        .execute(&mut *tx)
        .await
        .map_err(e("runs"))?;
    }
    for run in 1..=LOGGED_RUNS as i64 {
        for seq in 1..=LINES_PER_RUN as i64 {
            let level = match seq % 20 {
                0 => "warn",
                7 => "error",
                _ => "info",
            };
            sqlx::query(
                "INSERT INTO run_logs (run, seq, at, level, target, message) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(run)
            .bind(seq)
            .bind(now + seq)
            .bind(level)
            .bind("apex_connect_core::engine")
            .bind(format!("page committed records={seq} cursor=2026-12-01T00:00:{:02}Z", seq % 60))
            .execute(&mut *tx)
            .await
            .map_err(e("logs"))?;
        }
    }
    tx.commit().await.map_err(e("commit"))?;
    let body = br#"{"type":"items.updated","id":"x","payload":{"title":"a note","access_token":"secret"}}"#;
    for chunk in 0..(INBOX / 10_000) {
        let mut tx = pool.begin().await.map_err(e("begin"))?;
        for j in 0..10_000 {
            let i = chunk * 10_000 + j;
            let status = if i < DEAD { "dead" } else { "done" };
            sqlx::query(
                "INSERT INTO inbox (platform, connection, event_id, received_at, headers, body, status, \
                 attempts, next_attempt_at, last_error, finished_at) \
                 VALUES ('memory', ?, ?, ?, '{\"webhook-id\":\"x\"}', ?, ?, 5, ?, ?, ?)",
            )
            .bind(format!("conn-{:02}", i % CONNECTIONS))
            .bind(format!("evt-{i}"))
            .bind(now - i as i64)
            .bind(&body[..])
            .bind(status)
            .bind(now)
            .bind((status == "dead").then_some("the platform's event could not be parsed"))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(e("inbox"))?;
        }
        tx.commit().await.map_err(e("commit"))?;
    }
    pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().map_err(|e| Error::storage("tempdir").set_source(e))?;
    // APEX_BENCH_DB: where to write the database (kept afterwards, to inspect query plans).
    let path = std::env::var_os("APEX_BENCH_DB")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("state.db"));
    let store = SqliteStore::open(&path, EncryptionKey::generate()).await?;
    let dyn_store = Arc::new(store.clone()) as Arc<dyn StateStore>;
    let now = apex_connect_core::webhook::unix_ms(std::time::SystemTime::now());
    let mut builder = ServerState::builder(dyn_store.clone());
    for i in 0..CONNECTIONS {
        let id = format!("conn-{i:02}");
        let connector = MemoryConnector::new(["items"], 100, b"secret");
        builder = builder.connection(
            ConnectionHandle::new(id.clone(), Arc::new(connector))
                .with_streams(vec!["items".into()]),
        );
        dyn_store
            .upsert_connection(&Connection::new(
                ConnectionId::from(id.clone()),
                "memory",
                serde_json::json!({}),
            ))
            .await?;
        dyn_store
            .upsert_schedule(
                &ScheduleEntry::new(id, "items", "every 900000ms jitter 0ms", now),
                now,
            )
            .await?;
    }
    let state = builder.build();
    let t = Instant::now();
    seed(&path, now).await?;
    println!(
        "seeded {CONNECTIONS} connections, {RUNS} runs, {INBOX} inbox rows ({DEAD} dead), {} log lines in {:.1} s",
        LOGGED_RUNS * LINES_PER_RUN,
        t.elapsed().as_secs_f64()
    );
    let auth = AdminAuth::token(SecretString::from(TOKEN));
    let dashboard = Dashboard::new(state.clone(), auth.clone(), Arc::new(NullSink::new()));
    let app = admin_router(state, auth).merge(dashboard.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::config("bind").set_source(e))?;
    let base = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| Error::config("addr").set_source(e))?
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .ok()
    });
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::config("client").set_source(e))?;
    let login = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .map_err(|e| Error::config("login").set_source(e))?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| Error::config("no session cookie"))?
        .to_string();
    let page = http
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await
        .map_err(|e| Error::config("overview").set_source(e))?
        .text()
        .await
        .unwrap_or_default();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .ok_or_else(|| Error::config("no CSRF token"))?
        .to_string();
    let dead = dyn_store.inbox_dead_letters(1).await?;
    let dead_id = dead.first().map(|d| d.id.0).unwrap_or(1);
    let gets = [
        "/ui".to_string(),
        "/ui/fragments/overview".into(),
        "/ui/connections/conn-07".into(),
        "/ui/runs/500".into(),
        "/ui/runs/500?level=warn".into(),
        "/ui/inbox".into(),
        format!("/ui/inbox/{dead_id}"),
        "/ui/rejects".into(),
        "/admin/status".into(),
        "/admin/rejects".into(),
        "/metrics".into(),
    ];
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "route", "p50 ms", "p95 ms", "max ms"
    );
    for path in &gets {
        let mut ms = Vec::with_capacity(rounds);
        for _ in 0..rounds + 3 {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{path}"))
                .header("cookie", &cookie)
                .bearer_auth(TOKEN)
                .send()
                .await
                .map_err(|e| Error::config("request").set_source(e))?;
            let status = r.status();
            let _ = r.bytes().await;
            if !status.is_success() {
                return Err(Error::config("a page failed")
                    .with_context("path", path)
                    .with_context("status", status));
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut ms = ms.split_off(3);
        ms.sort_by(f64::total_cmp);
        println!(
            "GET {:<40} {:>9.2} {:>9.2} {:>9.2}",
            path,
            pct(&ms, 0.5),
            pct(&ms, 0.95),
            ms[ms.len() - 1]
        );
    }
    let posts: [(&str, Vec<(&str, &str)>); 5] = [
        ("/ui/connections/conn-07/disable", vec![]),
        ("/ui/connections/conn-07/enable", vec![]),
        (
            "/ui/connections/conn-07/schedule",
            vec![("stream", "items"), ("schedule", "every 20m")],
        ),
        ("/ui/connections/conn-07/sync", vec![("stream", "items")]),
        ("/ui/connections/conn-07/retry-failed", vec![]),
    ];
    for (path, fields) in &posts {
        let mut ms = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut form = fields.clone();
            form.push(("csrf", csrf.as_str()));
            let t = Instant::now();
            let r = http
                .post(format!("{base}{path}"))
                .header("cookie", &cookie)
                .form(&form)
                .send()
                .await
                .map_err(|e| Error::config("request").set_source(e))?;
            if r.status() != 303 {
                return Err(Error::config("an action failed")
                    .with_context("path", *path)
                    .with_context("status", r.status()));
            }
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "POST {:<39} {:>9.2} {:>9.2} {:>9.2}",
            path,
            pct(&ms, 0.5),
            pct(&ms, 0.95),
            ms[ms.len() - 1]
        );
    }
    store.close().await;
    Ok(())
}
