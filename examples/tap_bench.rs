//! The hot path measured as a user runs it: the `apex-connect` binary as its own process
//! (`tap` into a pipe, or `sync` into SQLite) against a simulator in another process. Prints
//! the client's own CPU time per record (user + system, `getrusage(RUSAGE_CHILDREN)` after
//! waiting for it; the simulator is a different child that is never waited for, so its CPU is
//! not counted), its peak RSS (`ru_maxrss`) and requests per second.
//!
//! ```sh
//! cargo build --release                                   # the apex-connect binary
//! cargo run --release --features _sims --example tap_bench                 # 100k and 1M, both platforms
//! cargo run --release --features _sims --example tap_bench -- 300000 hubspot tap
//! ```
//!
//! Arguments (all optional, any order): record counts (default `100000 1000000`), platforms
//! (`frontapp`, `hubspot`; default both), modes (`tap`, `sync`; default both).
//!
//! FrontApp: the `conversations` and `contacts` list streams (half each, no messages: list
//! streams only). HubSpot: `contacts` (100-record pages of ~700-byte objects). No rate limit
//! on the simulators: what is measured is the client's cost per record.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The simulator side: runs in a child process of this example (`--serve-sim`).
fn serve_sim(platform: &str, records: u64) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut out = std::io::stdout().lock();
        match platform {
            "frontapp" => {
                use apex_connect::frontapp::sim::{FrontSim, FrontSimConfig};
                use secrecy::ExposeSecret as _;
                let half = records / 2;
                let mut config = FrontSimConfig::realistic().contacts(half).tags(40);
                config.conversations = half;
                config.messages_per_conversation = 0;
                let sim = FrontSim::start(config).await?;
                writeln!(out, "{}", sim.base_url())?;
                writeln!(out, "{}", sim.api_token().expose_secret())?;
                out.flush()?;
                drop(out);
                std::future::pending::<()>().await;
            }
            "hubspot" => {
                use apex_connect::hubspot::sim::{HubSpotSim, HubSpotSimConfig};
                let config = HubSpotSimConfig::default()
                    .size(records, 0, 0)
                    .engagements(0)
                    .owners(10)
                    .rate_limits(None, None);
                let sim = HubSpotSim::start(config).await?;
                writeln!(out, "{}", sim.base_url())?;
                writeln!(out, "{}", sim.private_app_token())?;
                out.flush()?;
                drop(out);
                std::future::pending::<()>().await;
            }
            other => return Err(format!("unknown platform {other}").into()),
        }
        Ok(())
    })
}

struct Sim {
    child: Child,
    base_url: String,
    token: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sim(platform: &str, records: u64) -> Result<Sim, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-sim", platform, &records.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no simulator stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let base_url = lines.next().ok_or("simulator said nothing")??;
    let token = lines.next().ok_or("simulator gave no token")??;
    Ok(Sim {
        child,
        base_url,
        token,
    })
}

/// CPU time (user + system) and peak RSS (KiB) of the children this process waited for: in
/// measure mode, exactly the one client run.
fn children_usage() -> (Duration, u64) {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_CHILDREN is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return (Duration::ZERO, 0);
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    (
        tv(ru.ru_utime) + tv(ru.ru_stime),
        u64::try_from(ru.ru_maxrss).unwrap_or(0),
    )
}

fn binary() -> Result<PathBuf, BoxError> {
    // target/release/examples/tap_bench -> target/release/apex-connect
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the target directory")?;
    let bin = dir.join("apex-connect");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release` first",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

struct Run {
    records: u64,
    cpu: Duration,
    max_rss_kib: u64,
    wall: Duration,
}

fn secret_var(platform: &str) -> (&'static str, &'static str) {
    match platform {
        "frontapp" => ("api_token", "BENCH_FRONT_TOKEN"),
        _ => ("private_app_token", "BENCH_HUBSPOT_TOKEN"),
    }
}

fn streams(platform: &str) -> &'static [&'static str] {
    match platform {
        "frontapp" => &["conversations", "contacts"],
        _ => &["contacts"],
    }
}

fn stream_list(platform: &str) -> String {
    streams(platform)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Measure mode (`--measure PROGRAM ARGS...`, in a child of the example, so that
/// `RUSAGE_CHILDREN` holds exactly one waited-for process): runs the program, counts the
/// Singer `RECORD` lines of its standard output without parsing them, and prints
/// `records cpu_us max_rss_kib wall_us`.
fn measure(program: &str, args: &[String]) -> Result<(), BoxError> {
    let t0 = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut stderr = child.stderr.take().ok_or("no stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = stderr.read_to_string(&mut e);
        e
    });
    let mut records = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let needle = b"{\"type\":\"RECORD\"";
    let mut head: Vec<u8> = Vec::with_capacity(needle.len());
    let mut at_line_start = true;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\n' {
                at_line_start = true;
                head.clear();
                continue;
            }
            if at_line_start {
                head.push(b);
                if head.len() == needle.len() {
                    if head == needle {
                        records += 1;
                    }
                    at_line_start = false;
                    head.clear();
                }
            }
        }
    }
    let status = child.wait()?;
    let wall = t0.elapsed();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("{program} failed: {status}\n{err}").into());
    }
    let (cpu, rss) = children_usage();
    println!("{records} {} {rss} {}", cpu.as_micros(), wall.as_micros());
    Ok(())
}

/// Runs `bin args` under a measuring child process (see [`measure`]).
fn measured(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Run, BoxError> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--measure")
        .arg(bin)
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("measurement failed: {}", out.status).into());
    }
    let text = String::from_utf8(out.stdout)?;
    let f: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [records, cpu_us, rss, wall_us] = f[..] else {
        return Err(format!("unexpected measurement output: {text}").into());
    };
    Ok(Run {
        records,
        cpu: Duration::from_micros(cpu_us),
        max_rss_kib: rss,
        wall: Duration::from_micros(wall_us),
    })
}

fn run_tap(bin: &Path, dir: &Path, platform: &str, sim: &Sim) -> Result<Run, BoxError> {
    let (secret, var) = secret_var(platform);
    let config = dir.join(format!("tap-{platform}.json"));
    std::fs::write(
        &config,
        format!(
            r#"{{"streams": [{}], "base_url": "{}", "env": {{"{secret}": "{var}"}}}}"#,
            stream_list(platform),
            sim.base_url
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    measured(
        bin,
        &["tap", platform, "--config", &config],
        &[(var, &sim.token)],
    )
}

fn run_sync(bin: &Path, dir: &Path, platform: &str, sim: &Sim) -> Result<Run, BoxError> {
    let (secret, var) = secret_var(platform);
    let db = dir.join(format!("sync-{platform}.db"));
    let _ = std::fs::remove_file(&db);
    let config = dir.join(format!("sync-{platform}.toml"));
    std::fs::write(
        &config,
        format!(
            "store = \"{}\"\n\n[[connection]]\nid = \"bench\"\nplatform = \"{platform}\"\n\
             base_url = \"{}\"\nstreams = [{}]\nenv = {{ {secret} = \"{var}\" }}\n",
            db.display(),
            sim.base_url,
            stream_list(platform),
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let mut total = Run {
        records: 0,
        cpu: Duration::ZERO,
        max_rss_kib: 0,
        wall: Duration::ZERO,
    };
    for stream in streams(platform) {
        let run = measured(
            bin,
            &["sync", "bench", "--stream", stream, "-c", &config],
            &[
                (var, &sim.token),
                (
                    "APEX_CONNECT_KEY",
                    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                ),
            ],
        )?;
        total.cpu += run.cpu;
        total.wall += run.wall;
        total.max_rss_kib = total.max_rss_kib.max(run.max_rss_kib);
    }
    total.records = count_rows(&db)?;
    Ok(total)
}

fn count_rows(db: &Path) -> Result<u64, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records")
            .fetch_one(&mut c)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    })
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure") {
        let program = args.get(1).ok_or("--measure PROGRAM ARGS...")?;
        return measure(program, &args[2..]);
    }
    if args.first().map(String::as_str) == Some("--serve-sim") {
        let platform = args.get(1).ok_or("--serve-sim PLATFORM N")?;
        let n: u64 = args.get(2).ok_or("--serve-sim PLATFORM N")?.parse()?;
        return serve_sim(platform, n);
    }
    let mut sizes = Vec::new();
    let mut platforms = Vec::new();
    let mut modes = Vec::new();
    for a in &args {
        match a.as_str() {
            "frontapp" | "hubspot" => platforms.push(a.clone()),
            "tap" | "sync" => modes.push(a.clone()),
            n => sizes.push(n.replace('_', "").parse::<u64>()?),
        }
    }
    if sizes.is_empty() {
        sizes = vec![100_000, 1_000_000];
    }
    if platforms.is_empty() {
        platforms = vec!["frontapp".into(), "hubspot".into()];
    }
    if modes.is_empty() {
        modes = vec!["tap".into(), "sync".into()];
    }
    let bin = binary()?;
    let dir = tempfile::tempdir()?;
    println!(
        "{:<9} {:<5} {:>9} {:>10} {:>12} {:>10} {:>12}",
        "platform", "mode", "records", "CPU (s)", "CPU/record", "peak RSS", "records/s"
    );
    for platform in &platforms {
        for &n in &sizes {
            let sim = start_sim(platform, n)?;
            for mode in &modes {
                let run = match mode.as_str() {
                    "tap" => run_tap(&bin, dir.path(), platform, &sim)?,
                    _ => run_sync(&bin, dir.path(), platform, &sim)?,
                };
                let per = if run.records == 0 {
                    0.0
                } else {
                    run.cpu.as_secs_f64() * 1e6 / run.records as f64
                };
                println!(
                    "{:<9} {:<5} {:>9} {:>10.2} {:>9.2} µs {:>7} MiB {:>12.0}",
                    platform,
                    mode,
                    run.records,
                    run.cpu.as_secs_f64(),
                    per,
                    run.max_rss_kib / 1024,
                    run.records as f64 / run.wall.as_secs_f64().max(1e-9),
                );
            }
        }
    }
    println!("(CPU and peak RSS are the client process's own, from getrusage of that child alone)");
    Ok(())
}
