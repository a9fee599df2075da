//! Load generator for a separately started `apex-connect serve` process: generator and server
//! do not share a runtime (or a process), only the machine and loopback.
//!
//! ```text
//! cargo build --release -p apex-connect --no-default-features --features sqlite,server,memory --bin apex-connect
//! cargo build --release -p apex-connect-server --example webhook_drive
//! target/release/examples/webhook_drive [--rates 2000,5000] [--seconds 5] [--saturation 20000]
//!     [--concurrency 2] [--batch 64] [--max-batch 512] [--gen-threads 1] [--bin PATH] [--keep]
//! ```
//!
//! It writes a configuration (memory platform, ledger sink, `[workers]` and `[webhooks]` from
//! the flags) in a temporary directory, starts `apex-connect serve` (by default the binary next
//! to this example's directory, i.e. the release build of the facade's `apex-connect` with the
//! `memory` feature), waits for `/admin/status`, then:
//!
//! 1. for each rate: an open loop sending Standard-Webhooks-signed requests at that rate for
//!    `--seconds` with the workers running; time to the 2xx (p50/p99/max), then waits until the
//!    inbox drained;
//! 2. saturation: `--saturation` requests, 128 at a time: accepted per second (workers running);
//! 3. stops the server with SIGTERM and reads webhook-to-sink latency (inbox `received_at` ->
//!    `sink_ledger.first_applied_at`) per phase from the database.

#[path = "common/mod.rs"]
mod common;
use common::{latencies, pct, requests};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apex_connect_core::{Error, Result};
use apex_connect_testkit::MemoryConnector;
use futures::StreamExt;
use http::HeaderMap;

const SECRET_VAR: &str = "APEX_DRIVE_WEBHOOK_SECRET";
const SECRET: &str = "drive-secret";

struct Args {
    rates: Vec<u64>,
    seconds: u64,
    saturation: usize,
    concurrency: usize,
    batch: usize,
    max_batch: usize,
    gen_threads: usize,
    bin: PathBuf,
    keep: bool,
}

fn parse_args() -> Result<Args> {
    let default_bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(|d| d.join("apex-connect")))
        .unwrap_or_else(|| PathBuf::from("target/release/apex-connect"));
    let mut a = Args {
        rates: vec![2000, 5000],
        seconds: 5,
        saturation: 20_000,
        concurrency: 2,
        batch: 64,
        max_batch: 512,
        gen_threads: 1,
        bin: default_bin,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    let bad = |flag: &str| Error::config("bad or missing value").with_context("flag", flag);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| bad(&flag));
        match flag.as_str() {
            "--rates" => {
                a.rates = value()?
                    .split(',')
                    .map(|r| r.trim().parse().map_err(|_| bad("--rates")))
                    .collect::<Result<_>>()?;
            }
            "--seconds" => a.seconds = value()?.parse().map_err(|_| bad("--seconds"))?,
            "--saturation" => a.saturation = value()?.parse().map_err(|_| bad("--saturation"))?,
            "--concurrency" => {
                a.concurrency = value()?.parse().map_err(|_| bad("--concurrency"))?;
            }
            "--batch" => a.batch = value()?.parse().map_err(|_| bad("--batch"))?,
            "--max-batch" => a.max_batch = value()?.parse().map_err(|_| bad("--max-batch"))?,
            "--gen-threads" => {
                a.gen_threads = value()?.parse().map_err(|_| bad("--gen-threads"))?;
            }
            "--bin" => a.bin = PathBuf::from(value()?),
            "--keep" => a.keep = true,
            other => {
                return Err(Error::config("unknown flag (see the example's docs)")
                    .with_context("flag", other));
            }
        }
    }
    Ok(a)
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::config("no free port").set_source(e))
}

struct Server {
    child: Child,
    base: String,
    db: PathBuf,
    dir: PathBuf,
}

fn start_server(a: &Args) -> Result<Server> {
    let dir = std::env::temp_dir().join(format!("apex-webhook-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::storage("tempdir").set_source(e))?;
    let port = free_port()?;
    let db = dir.join("state.db");
    let config = dir.join("apex-connect.toml");
    std::fs::write(
        &config,
        format!(
            r#"
database = "{db}"
listen = "127.0.0.1:{port}"

[sink]
kind = "ledger"

[webhooks]
max_batch = {max_batch}

[workers]
concurrency = {concurrency}
batch = {batch}
poll = "50ms"

[[connection]]
id = "acme"
platform = "memory"
streams = ["items"]
env = {{ webhook_secret = "{SECRET_VAR}" }}
"#,
            db = db.display(),
            max_batch = a.max_batch,
            concurrency = a.concurrency,
            batch = a.batch,
        ),
    )
    .map_err(|e| Error::storage("config").set_source(e))?;
    let log = std::fs::File::create(dir.join("serve.log"))
        .map_err(|e| Error::storage("log").set_source(e))?;
    let child = Command::new(&a.bin)
        .args(["serve", "--config"])
        .arg(&config)
        .env(SECRET_VAR, SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            Error::config("cannot start apex-connect (build it with --release --features memory)")
                .with_context("bin", a.bin.display())
                .set_source(e)
        })?;
    Ok(Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        db,
        dir,
    })
}

async fn admin_status(client: &reqwest::Client, base: &str) -> Option<serde_json::Value> {
    let r = client
        .get(format!("{base}/admin/status"))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn wait_drained(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(s) = admin_status(client, base).await
            && s["inbox"]["pending"] == 0
            && s["inbox"]["in_flight"] == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("warning: the inbox did not drain within 120 s");
}

/// Open loop: `rate`/s for `seconds`; returns (sorted latencies in ms, failures, elapsed s).
async fn fixed_rate(
    client: &reqwest::Client,
    url: &str,
    reqs: Vec<(HeaderMap, Vec<u8>)>,
    rate: u64,
) -> (Vec<f64>, usize, f64) {
    let total = reqs.len();
    let per_ms = rate as f64 / 1000.0;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(total);
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut reqs = reqs.into_iter();
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * 1000.0) * per_ms).ceil() as usize;
        while sent < due.min(total) {
            let Some((h, b)) = reqs.next() else { break };
            let request = client.post(url).headers(h).body(b);
            handles.push(tokio::spawn(async move {
                let t = Instant::now();
                let ok = request
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                (ok, t.elapsed().as_secs_f64() * 1000.0)
            }));
            sent += 1;
        }
    }
    let (lat, failed) = latencies(handles).await;
    let elapsed = started.elapsed().as_secs_f64();
    (lat, failed, elapsed)
}

async fn run(a: Args) -> Result<()> {
    let mut server = start_server(&a)?;
    let result = drive(&a, &server).await;
    // SIGTERM: the server finishes its batches and closes the database.
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let _ = tokio::task::block_in_place(|| server.child.wait());
    if result.is_ok() {
        webhook_to_sink(&server.db, &a.rates).await?;
    }
    if a.keep {
        println!("kept {}", server.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&server.dir);
    }
    result
}

async fn drive(a: &Args, server: &Server) -> Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .map_err(|e| Error::config("client").set_source(e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin_status(&client, &server.base).await.is_none() {
        if Instant::now() > deadline {
            return Err(Error::config(
                "apex-connect serve did not come up (see serve.log)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{}/webhooks/memory/acme", server.base);
    let signer = MemoryConnector::new(["items"], 100, SECRET.as_bytes());
    println!(
        "server: separate process (release), workers concurrency {} batch {}, group commit max_batch {}; generator: {} thread(s)",
        a.concurrency, a.batch, a.max_batch, a.gen_threads
    );

    // Warm-up: connections, statement caches, pages.
    let warm = requests(&signer, "warm-", 2000);
    let _ = fixed_rate(&client, &url, warm, 2000).await;
    wait_drained(&client, &server.base).await;

    for &rate in &a.rates {
        let reqs = requests(&signer, &format!("r{rate}-"), (rate * a.seconds) as usize);
        let (lat, failed, secs) = fixed_rate(&client, &url, reqs, rate).await;
        println!(
            "{rate}/s offered for {secs:.2}s: {} ok, {failed} failed; time to 2xx p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        wait_drained(&client, &server.base).await;
    }

    let reqs = requests(&signer, "sat-", a.saturation);
    let started = Instant::now();
    let ok = futures::stream::iter(reqs)
        .map(|(h, b)| {
            let request = client.post(&url).headers(h).body(b);
            async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(128)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "saturation: {ok}/{} accepted in {secs:.2}s = {:.0}/s (128 concurrent, workers running)",
        a.saturation,
        ok as f64 / secs
    );
    wait_drained(&client, &server.base).await;
    Ok(())
}

async fn webhook_to_sink(db: &std::path::Path, rates: &[u64]) -> Result<()> {
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new()
            .filename(db)
            .read_only(true),
    )
    .await
    .map_err(|e| Error::storage("open").set_source(e))?;
    for rate in rates {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT l.first_applied_at - i.received_at FROM inbox i JOIN sink_ledger l \
             ON l.connection = i.connection AND l.stream = 'items' \
             AND l.id = json_extract(CAST(i.body AS TEXT), '$.id') \
             WHERE i.event_id LIKE ?1",
        )
        .bind(format!("r{rate}-%"))
        .fetch_all(&pool)
        .await
        .map_err(|e| Error::storage("query").set_source(e))?;
        let mut ms: Vec<f64> = rows.into_iter().map(|(v,)| v as f64).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        println!(
            "webhook-to-sink at {rate}/s: {} events, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms.len(),
            pct(&ms, 0.5),
            pct(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    pool.close().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gen_threads.max(1))
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
