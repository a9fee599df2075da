//! Load generator for separately started `apex-connect serve` processes: generator and servers
//! do not share a runtime (or a process), only the machine and loopback.
//!
//! ```text
//! cargo build --release -p apex-connect --no-default-features --features sqlite,server,memory --bin apex-connect
//! cargo build --release -p apex-connect-server --example webhook_drive
//! target/release/examples/webhook_drive [--rates 2000,5000] [--seconds 5] [--saturation 20000]
//!     [--concurrency 2] [--batch 64] [--max-batch 512] [--gen-threads 1] [--bin PATH] [--keep]
//!     [--store postgres://user@host:port/db [--store-as-is]] [--nodes 1] [--sync N]
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
//!    `sink_ledger.first_applied_at`) per phase from the database;
//! 4. prints one table of the run: per phase the answers, time to 2xx, webhook-to-sink, and the
//!    CPU per accepted webhook (from the phase's start until its inbox drained) of the serve
//!    processes (`/proc/<pid>/stat` user+sys), of the processes named `postgres` (on this
//!    machine; PostgreSQL runs only), and of the whole machine (`/proc/stat`, generator
//!    included); plus the load average before and after.
//!
//! `--sync N` adds a second connection (`bulk`, memory platform, `N` generated records in pages
//! of 500) with a full resync scheduled every second: the scheduler's runs write their pages to
//! the same database (run records, cursors, the ledger sink) while the webhooks arrive, as a
//! service with scheduled syncs does.
//!
//! By default the state is a SQLite file in the temporary directory. PostgreSQL (the example
//! and the binary built with the `postgres` feature:
//! `--features sqlite,postgres,server,memory` for the binary, `--features postgres` for the
//! example):
//!
//! - `--store postgres://user@host:port/db`: the password in `PGPASSWORD` (the children
//!   inherit it; the URL must not hold one). A fresh database is created on that server for the
//!   run (named `apex_drive_<pid>_<random>`, made from a connection to `db`, so the role needs
//!   `CREATEDB`) and dropped at the end unless `--keep`; `--store-as-is` uses `db` itself
//!   (the event ids repeat from run to run, so use an empty database).
//! - `--nodes N` (default 1; more than one needs PostgreSQL): N serve processes on the same
//!   database, each with its own ports; the generator spreads the requests round-robin over
//!   them (as a load balancer would), in every phase. The drain checks ask node 0 (the inbox
//!   counts are the database's).

#[path = "common/mod.rs"]
mod common;
use common::{latencies, pct, requests};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use apex_connect_core::{Error, Result};
use apex_connect_testkit::MemoryConnector;
use futures::StreamExt;
use http::HeaderMap;
use sqlx::Connection;

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
    /// A `postgres://` store; `None`: a SQLite file in the run's directory.
    store: Option<String>,
    /// Use `store`'s database itself instead of a fresh one on its server.
    store_as_is: bool,
    nodes: usize,
    /// Records of the scheduled full resync of a second connection (0: none).
    sync: u64,
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
        store: None,
        store_as_is: false,
        nodes: 1,
        sync: 0,
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
            "--store" => a.store = Some(value()?),
            "--store-as-is" => a.store_as_is = true,
            "--nodes" => a.nodes = value()?.parse().map_err(|_| bad("--nodes"))?,
            "--sync" => a.sync = value()?.parse().map_err(|_| bad("--sync"))?,
            other => {
                return Err(Error::config("unknown flag (see the example's docs)")
                    .with_context("flag", other));
            }
        }
    }
    if let Some(store) = &a.store {
        if !is_postgres(store) {
            return Err(
                Error::config("--store takes a postgres:// URL").with_context("store", store)
            );
        }
        let url = url::Url::parse(store).map_err(|e| bad("--store").set_source(e))?;
        if url.password().is_some() {
            return Err(Error::config(
                "--store: no password in the URL (set PGPASSWORD, the children inherit it)",
            ));
        }
    }
    if a.nodes == 0 || (a.nodes > 1 && a.store.is_none()) {
        return Err(Error::config(
            "--nodes: at least 1, and more than 1 only on a shared --store postgres://",
        ));
    }
    Ok(a)
}

fn is_postgres(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::config("no free port").set_source(e))
}

/// Where the nodes keep their state.
enum Store {
    Sqlite(PathBuf),
    Postgres {
        /// The nodes' store URL (no password).
        url: String,
        /// The fresh database made for this run, dropped at the end unless `--keep`:
        /// (its name, the URL it was created from).
        fresh: Option<(String, String)>,
    },
}

impl Store {
    /// The TOML line naming the store.
    fn toml(&self) -> String {
        match self {
            Store::Sqlite(db) => format!("database = \"{}\"", db.display()),
            Store::Postgres { url, .. } => format!("store = \"{url}\""),
        }
    }
}

async fn pg_connect(url: &str) -> Result<sqlx::PgConnection> {
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .map_err(|e| Error::config("store URL").set_source(e))?;
    sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(|e| Error::storage("connect to PostgreSQL").set_source(e))
}

async fn open_store(a: &Args, dir: &Path) -> Result<Store> {
    let Some(given) = &a.store else {
        return Ok(Store::Sqlite(dir.join("state.db")));
    };
    if a.store_as_is {
        return Ok(Store::Postgres {
            url: given.clone(),
            fresh: None,
        });
    }
    let name = format!(
        "apex_drive_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut conn = pg_connect(given).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .map_err(|e| Error::storage("CREATE DATABASE").set_source(e))?;
    conn.close().await.ok();
    let mut url = url::Url::parse(given).map_err(|e| Error::config("--store").set_source(e))?;
    url.set_path(&name);
    Ok(Store::Postgres {
        url: url.to_string(),
        fresh: Some((name, given.clone())),
    })
}

async fn drop_store(store: &Store) {
    if let Store::Postgres {
        fresh: Some((name, admin)),
        ..
    } = store
    {
        let dropped = async {
            let mut conn = pg_connect(admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .map_err(|e| Error::storage("DROP DATABASE").set_source(e))?;
            conn.close().await.ok();
            Ok::<_, Error>(())
        };
        if let Err(e) = dropped.await {
            eprintln!("warning: could not drop the database {name}: {e}");
        }
    }
}

/// One `apex-connect serve` process.
struct Server {
    child: Child,
    base: String,
    /// The admin listener (status, drain checks, metrics).
    admin: String,
}

/// The `--sync` connection: generated records resynced in full every second.
fn bulk_connection(records: u64) -> String {
    if records == 0 {
        return String::new();
    }
    format!(
        r#"
[[connection]]
id = "bulk"
platform = "memory"
streams = ["bulk"]
settings = {{ page_size = 500, generated = {{ bulk = {records} }} }}
env = {{ webhook_secret = "{SECRET_VAR}" }}

[[connection.schedule]]
every = "1s"
full = true
"#
    )
}

fn start_server(a: &Args, store: &Store, dir: &Path, i: usize) -> Result<Server> {
    let port = free_port()?;
    let admin_port = free_port()?;
    let config = dir.join(format!("apex-connect-{i}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
{store}
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"

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
{bulk}"#,
            store = store.toml(),
            bulk = bulk_connection(a.sync),
            max_batch = a.max_batch,
            concurrency = a.concurrency,
            batch = a.batch,
        ),
    )
    .map_err(|e| Error::storage("config").set_source(e))?;
    let log = std::fs::File::create(dir.join(format!("serve-{i}.log")))
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
            Error::config(
                "cannot start apex-connect (build it with --release --features memory, and \
                 postgres for a postgres:// store)",
            )
            .with_context("bin", a.bin.display())
            .set_source(e)
        })?;
    Ok(Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
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

async fn wait_ready(client: &reqwest::Client, server: &Server) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin_status(client, &server.admin).await.is_none() {
        if Instant::now() > deadline {
            return Err(Error::config(
                "apex-connect serve did not come up (see serve-<node>.log, --keep)",
            )
            .with_context("admin", &server.admin));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until the inbox holds nothing pending or in flight and at least `finished` events are
/// done or dead. The admin status's counts may be up to two seconds old (the server shares one
/// reading), so a zero backlog alone could be a reading from before the phase: the finished
/// count, which only grows, tells a fresh reading from a stale one.
async fn wait_drained(client: &reqwest::Client, base: &str, finished: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(s) = admin_status(client, base).await
            && s["inbox"]["pending"] == 0
            && s["inbox"]["in_flight"] == 0
            && s["inbox"]["done"].as_u64().unwrap_or(0) + s["inbox"]["dead"].as_u64().unwrap_or(0)
                >= finished
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("warning: the inbox did not drain within 120 s");
}

/// `apex_connect_inbox_work_total{outcome="processed"}` of a node, if it answers.
async fn processed(client: &reqwest::Client, admin: &str) -> Option<u64> {
    let text = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("apex_connect_inbox_work_total{outcome=\"processed\"}"))?
        .rsplit(' ')
        .next()?
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

// ---- CPU accounting (Linux /proc) ----------------------------------------------------------

/// Clock ticks per second (`getconf CLK_TCK`, else the usual 100).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// (command name, utime + stime in ticks) of a process.
fn proc_cpu(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_string();
    // After the command: state (field 3) ... utime (14), stime (15).
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The machine's busy ticks (all but idle and iowait), from `/proc/stat`.
fn machine_busy() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    line.split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal (guest times are in user already)
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// CPU ticks at one moment: the serve processes, the `postgres` processes, the machine.
#[derive(Clone, Copy, Default)]
struct CpuSnap {
    servers: u64,
    postgres: u64,
    machine: u64,
}

fn cpu_snap(pids: &[u32], postgres: bool) -> CpuSnap {
    let servers = pids
        .iter()
        .filter_map(|&p| proc_cpu(p))
        .map(|(_, t)| t)
        .sum();
    let mut pg = 0;
    if postgres && let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((comm, t)) = proc_cpu(pid)
                && comm == "postgres"
            {
                pg += t;
            }
        }
    }
    CpuSnap {
        servers,
        postgres: pg,
        machine: machine_busy(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---- The run -------------------------------------------------------------------------------

/// One phase's figures.
struct Phase {
    name: String,
    /// Prefix of its event ids.
    prefix: String,
    sent: usize,
    ok: usize,
    failed: usize,
    /// Accepted (2xx) per second while sending.
    accepted_per_s: f64,
    /// Sorted times to 2xx (ms); empty for saturation (not measured per request).
    lat: Vec<f64>,
    /// CPU ticks from the phase's start until its inbox drained.
    cpu: (CpuSnap, CpuSnap),
    /// Webhook-to-sink, sorted (ms), read at the end.
    sink: Vec<f64>,
}

struct Run {
    phases: Vec<Phase>,
    load_before: String,
    load_after: String,
    /// Processed per node (their /metrics counters), before the stop.
    per_node: Vec<Option<u64>>,
}

/// Open loop: `rate`/s for `seconds`, requests round-robin over `urls`; returns (sorted
/// latencies in ms, failures, elapsed s).
async fn fixed_rate(
    client: &reqwest::Client,
    urls: &[String],
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
            let request = client.post(&urls[sent % urls.len()]).headers(h).body(b);
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
    let dir = std::env::temp_dir().join(format!("apex-webhook-drive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::storage("tempdir").set_source(e))?;
    let store = open_store(&a, &dir).await?;
    let mut servers: Vec<Server> = Vec::with_capacity(a.nodes);
    let result = async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .build()
            .map_err(|e| Error::config("client").set_source(e))?;
        // Node 0 first (it migrates a fresh database), then the others.
        for i in 0..a.nodes {
            servers.push(start_server(&a, &store, &dir, i)?);
            if i == 0 {
                wait_ready(&client, &servers[0]).await?;
            }
        }
        for s in &servers[1..] {
            wait_ready(&client, s).await?;
        }
        drive(
            &a,
            &client,
            &servers,
            matches!(store, Store::Postgres { .. }),
        )
        .await
    }
    .await;
    // SIGTERM: the servers finish their batches and close the database.
    for s in &servers {
        let _ = Command::new("kill")
            .args(["-TERM", &s.child.id().to_string()])
            .status();
    }
    for s in &mut servers {
        let _ = tokio::task::block_in_place(|| s.child.wait());
    }
    let outcome = match result {
        Ok(mut run) => match webhook_to_sink(&store, &mut run.phases).await {
            Ok(()) => {
                print_table(&a, &store, &run);
                Ok(())
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if a.keep {
        println!("kept {}", dir.display());
        if let Store::Postgres { url, .. } = &store {
            println!("kept the database {url}");
        }
    } else {
        drop_store(&store).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
    outcome
}

async fn drive(
    a: &Args,
    client: &reqwest::Client,
    servers: &[Server],
    postgres: bool,
) -> Result<Run> {
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("{}/webhooks/memory/acme", s.base))
        .collect();
    let admin = &servers[0].admin;
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let signer = MemoryConnector::new(["items"], 100, SECRET.as_bytes());
    println!(
        "servers: {} separate process(es) (release) on {}, workers concurrency {} batch {}, group commit max_batch {}; generator: {} thread(s), round-robin over the nodes{}",
        a.nodes,
        if postgres { "PostgreSQL" } else { "SQLite" },
        a.concurrency,
        a.batch,
        a.max_batch,
        a.gen_threads,
        if a.sync > 0 {
            format!("; a full resync of {} records every second", a.sync)
        } else {
            String::new()
        }
    );

    // Warm-up: connections, statement caches, pages.
    let warm = requests(&signer, "warm-", 2000);
    let (warm_ok, _, _) = fixed_rate(client, &urls, warm, 2000).await;
    // Events accepted so far: each phase waits until all of them are finished.
    let mut accepted = warm_ok.len() as u64;
    wait_drained(client, admin, accepted).await;

    let load_before = load_average();
    let mut phases = Vec::new();
    for &rate in &a.rates {
        let prefix = format!("r{rate}-");
        let reqs = requests(&signer, &prefix, (rate * a.seconds) as usize);
        let sent = reqs.len();
        let before = cpu_snap(&pids, postgres);
        let (lat, failed, secs) = fixed_rate(client, &urls, reqs, rate).await;
        println!(
            "{rate}/s offered for {secs:.2}s: {} ok, {failed} failed; time to 2xx p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        );
        accepted += lat.len() as u64;
        wait_drained(client, admin, accepted).await;
        let after = cpu_snap(&pids, postgres);
        phases.push(Phase {
            name: format!("{rate}/s"),
            prefix,
            sent,
            ok: lat.len(),
            failed,
            accepted_per_s: lat.len() as f64 / secs,
            lat,
            cpu: (before, after),
            sink: Vec::new(),
        });
    }

    let prefix = "sat-".to_string();
    let reqs = requests(&signer, &prefix, a.saturation);
    let before = cpu_snap(&pids, postgres);
    let started = Instant::now();
    let ok = futures::stream::iter(reqs.into_iter().enumerate())
        .map(|(k, (h, b))| {
            let request = client.post(&urls[k % urls.len()]).headers(h).body(b);
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
    accepted += ok as u64;
    wait_drained(client, admin, accepted).await;
    let after = cpu_snap(&pids, postgres);
    phases.push(Phase {
        name: "saturation".into(),
        prefix,
        sent: a.saturation,
        ok,
        failed: a.saturation - ok,
        accepted_per_s: ok as f64 / secs,
        lat: Vec::new(),
        cpu: (before, after),
        sink: Vec::new(),
    });
    let load_after = load_average();
    let mut per_node = Vec::with_capacity(servers.len());
    for s in servers {
        per_node.push(processed(client, &s.admin).await);
    }
    Ok(Run {
        phases,
        load_before,
        load_after,
        per_node,
    })
}

/// Reads each phase's webhook-to-sink latencies (inbox `received_at` ->
/// `sink_ledger.first_applied_at`, ms).
async fn webhook_to_sink(store: &Store, phases: &mut [Phase]) -> Result<()> {
    match store {
        Store::Sqlite(db) => {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(db)
                    .read_only(true),
            )
            .await
            .map_err(|e| Error::storage("open").set_source(e))?;
            for p in phases.iter_mut() {
                let rows: Vec<(i64,)> = sqlx::query_as(
                    "SELECT l.first_applied_at - i.received_at FROM inbox i JOIN sink_ledger l \
                     ON l.connection = i.connection AND l.stream = 'items' \
                     AND l.id = json_extract(CAST(i.body AS TEXT), '$.id') \
                     WHERE i.event_id LIKE ?1",
                )
                .bind(format!("{}%", p.prefix))
                .fetch_all(&pool)
                .await
                .map_err(|e| Error::storage("query").set_source(e))?;
                p.sink = sorted_ms(rows);
            }
            pool.close().await;
        }
        Store::Postgres { url, .. } => {
            let mut conn = pg_connect(url).await?;
            for p in phases.iter_mut() {
                let rows: Vec<(i64,)> = sqlx::query_as(
                    "SELECT l.first_applied_at - i.received_at FROM inbox i JOIN sink_ledger l \
                     ON l.connection = i.connection AND l.stream = 'items' \
                     AND l.id = (convert_from(i.body, 'UTF8')::jsonb ->> 'id') \
                     WHERE i.event_id LIKE $1",
                )
                .bind(format!("{}%", p.prefix))
                .fetch_all(&mut conn)
                .await
                .map_err(|e| Error::storage("query").set_source(e))?;
                p.sink = sorted_ms(rows);
            }
            conn.close().await.ok();
        }
    }
    for p in phases.iter() {
        println!(
            "webhook-to-sink at {}: {} events, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            p.name,
            p.sink.len(),
            pct(&p.sink, 0.5),
            pct(&p.sink, 0.99),
            p.sink.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

fn sorted_ms(rows: Vec<(i64,)>) -> Vec<f64> {
    let mut ms: Vec<f64> = rows.into_iter().map(|(v,)| v as f64).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms
}

fn print_table(a: &Args, store: &Store, run: &Run) {
    let tick_ms = 1000.0 / clock_ticks();
    let postgres = matches!(store, Store::Postgres { .. });
    let per = |ticks: u64, ok: usize| {
        if ok == 0 {
            f64::NAN
        } else {
            ticks as f64 * tick_ms * 1000.0 / ok as f64
        }
    };
    println!();
    println!(
        "== {} node(s), {}, {} s per rate, saturation {} (128 in flight)",
        a.nodes,
        if postgres { "PostgreSQL" } else { "SQLite" },
        a.seconds,
        a.saturation
    );
    println!(
        "{:<11} {:>6} {:>6} {:>6} {:>9} | {:>8} {:>8} {:>8} | {:>7} {:>7} | {:>8} {:>8} {:>8}",
        "phase",
        "sent",
        "ok",
        "failed",
        "accept/s",
        "2xx p50",
        "2xx p99",
        "2xx max",
        "sink50",
        "sink99",
        "cpu srv",
        "cpu pg",
        "cpu all"
    );
    println!(
        "{:<11} {:>6} {:>6} {:>6} {:>9} | {:>8} {:>8} {:>8} | {:>7} {:>7} | {:>8} {:>8} {:>8}",
        "", "", "", "", "", "ms", "ms", "ms", "ms", "ms", "µs/wh", "µs/wh", "µs/wh"
    );
    for p in &run.phases {
        let (b, e) = p.cpu;
        let pg = if postgres {
            format!("{:.0}", per(e.postgres.saturating_sub(b.postgres), p.ok))
        } else {
            "-".into()
        };
        let lat = |q: f64| {
            if p.lat.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", pct(&p.lat, q))
            }
        };
        println!(
            "{:<11} {:>6} {:>6} {:>6} {:>9.0} | {:>8} {:>8} {:>8} | {:>7.0} {:>7.0} | {:>8.0} {:>8} {:>8.0}",
            p.name,
            p.sent,
            p.ok,
            p.failed,
            p.accepted_per_s,
            lat(0.5),
            lat(0.99),
            lat(1.0),
            pct(&p.sink, 0.5),
            pct(&p.sink, 0.99),
            per(e.servers.saturating_sub(b.servers), p.ok),
            pg,
            per(e.machine.saturating_sub(b.machine), p.ok),
        );
    }
    let nodes: Vec<String> = run
        .per_node
        .iter()
        .map(|n| n.map_or("?".into(), |v| v.to_string()))
        .collect();
    println!(
        "CPU per accepted webhook from the phase's start until its inbox drained: serve processes, \
         processes named postgres, whole machine (generator included)"
    );
    println!("processed per node (incl. warm-up): {}", nodes.join(", "));
    println!(
        "load average before the first phase: {}; after saturation: {}",
        run.load_before, run.load_after
    );
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
