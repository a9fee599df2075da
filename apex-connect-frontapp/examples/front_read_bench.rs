//! CPU and memory of the connector's read path, measured in a process that does nothing else.
//!
//! ```sh
//! cargo run --release -p apex-connect-frontapp --features sim --example front_read_bench -- cpu
//! cargo run --release -p apex-connect-frontapp --features sim --example front_read_bench -- mem
//! ```
//!
//! - `cpu` (issue 11): the simulator runs in a child process (this binary again, `sim`
//!   mode); this process reads every page of `conversations`, `contacts` and `messages`
//!   (`ConnectorExt::read_all`, records dropped: no sink, no entity mapping, as a tap that
//!   writes raw records) and prints, per stream, records, requests, wall time, records/s and
//!   the CPU time of this process per record (`getrusage(RUSAGE_SELF)`, user + system, all
//!   threads: parsing, HTTP, TLS-less loopback I/O, tokio). `cpu quick` uses smaller
//!   accounts; stream names after `cpu` read only those; `map` also maps every record to
//!   its entity (`Connector::map_entity`, what an entity sink costs on top).
//! - `mem` (issue 8): this process serves a ~31 MiB page of tiny records (`{"id":"c123"}`,
//!   about 2.4 million of them where 100 were asked for) and a ~31 MiB page of 100 records of
//!   310 KB each; a child process (this binary, `mem-read` mode) reads each once and reports
//!   its peak RSS (`VmHWM`) before and after the read, against the bound of issue 8:
//!   64 MB + 3 x the body.
//!
//! Figures only; nothing is asserted (the bound is checked by eye and reported).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use apex_connect_core::{Connector, ConnectorExt, StreamId};
use apex_connect_frontapp::{FrontConnector, FrontSim, FrontSimConfig};
use futures::StreamExt;
use secrecy::SecretString;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Peak RSS of this process in MB (`VmHWM` of `/proc/self/status`: per address space, so a
/// child's figure does not inherit its parent's, as `ru_maxrss` does across `execve`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time (user + system) of this process, in seconds, and its peak RSS in MB.
fn usage() -> (f64, f64) {
    // SAFETY: `getrusage` writes into the zeroed struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), peak_rss_mb())
}

/// Starts this binary in `mode` with `args`; returns the child and the first line it prints.
fn spawn_self(mode: &str, args: &[String]) -> Result<(Child, String), BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg(mode)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok((child, line.trim().to_string()))
}

/// `sim` mode: the simulator, serving until killed; prints its base URL.
async fn serve_sim(args: &[String]) -> Result<(), BoxError> {
    let n = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(0) };
    let sim = FrontSim::start(
        FrontSimConfig::realistic()
            .size(n(0), n(1))
            .contacts(n(2))
            .tags(40),
    )
    .await?;
    println!("{}", sim.base_url());
    std::future::pending::<()>().await;
    Ok(())
}

async fn cpu(quick: bool, map: bool, streams: &[String]) -> Result<(), BoxError> {
    let (conversations, per_conversation, contacts) = if quick {
        (2_000u64, 5u64, 2_000u64)
    } else {
        (20_000, 5, 20_000)
    };
    let (mut child, base) = spawn_self(
        "sim",
        &[
            conversations.to_string(),
            per_conversation.to_string(),
            contacts.to_string(),
        ],
    )?;
    let streams: Vec<&str> = if streams.is_empty() {
        vec!["conversations", "contacts", "messages"]
    } else {
        streams.iter().map(String::as_str).collect()
    };
    let front = FrontConnector::builder()
        .base_url(base.clone())
        .api_token(SecretString::from(FrontSimConfig::default().api_token))
        .build()?;
    println!(
        "front_read_bench cpu{}: simulator in process {} at {base}; {conversations} conversations x {per_conversation} messages, {contacts} contacts; {} CPUs",
        if map { " (with map_entity)" } else { "" },
        child.id(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  {:<14} {:>8} {:>8} {:>8} {:>10} {:>14} {:>9}",
        "stream", "records", "requests", "wall s", "records/s", "CPU us/record", "peak MB"
    );
    let mut result = Ok(());
    for stream in streams {
        let s = StreamId::from(stream.to_string());
        let requests = front.http_stats().requests_sent;
        let (cpu0, _) = usage();
        let started = Instant::now();
        let mut records = 0u64;
        let mut pages = front.read_all(&s, None);
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => {
                    records += p.records.len() as u64;
                    if map {
                        for r in &p.records {
                            if let Err(e) = front.map_entity(r) {
                                result = Err(format!("{stream}: {e}").into());
                            }
                        }
                    }
                }
                Err(e) => {
                    result = Err(format!("{stream}: {e}").into());
                    break;
                }
            }
        }
        drop(pages);
        let wall = started.elapsed().as_secs_f64();
        let (cpu1, peak) = usage();
        println!(
            "  {:<14} {:>8} {:>8} {:>8.2} {:>10.0} {:>14.2} {:>9.1}",
            stream,
            records,
            front.http_stats().requests_sent - requests,
            wall,
            records as f64 / wall.max(1e-9),
            (cpu1 - cpu0) * 1e6 / (records.max(1) as f64),
            peak
        );
    }
    // The child is ours: stop it by its handle.
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `mem-read` mode: reads one page of `stream` from `base` and reports peak RSS.
async fn mem_read(base: &str, stream: &str) -> Result<(), BoxError> {
    let front = FrontConnector::builder()
        .base_url(base.to_string())
        .api_token(SecretString::from("bench-token"))
        .streams([stream])
        .build()?;
    let (_, before) = usage();
    let started = Instant::now();
    let outcome = match front.read(&StreamId::from(stream.to_string()), None).await {
        Ok(p) => format!(
            "{} records, {} raw bytes held",
            p.records.len(),
            p.records.iter().map(|r| r.raw.len()).sum::<usize>()
        ),
        Err(e) => format!("error ({}): {}", e.kind(), e.message()),
    };
    let (_, after) = usage();
    println!(
        "peak RSS {before:.1} MB before the read, {after:.1} MB after ({:.2}s): {outcome}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A list body of about `target` bytes: tiny records, or `n` records padded to fill it.
fn body(target: usize, records: Option<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(target + 1024);
    out.extend_from_slice(br#"{"_pagination":{"next":null},"_links":{"self":"x"},"_results":["#);
    match records {
        None => {
            let mut i = 0u64;
            while out.len() < target {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(format!(r#"{{"id":"c{i}"}}"#).as_bytes());
                i += 1;
            }
        }
        Some(n) => {
            let pad = "x".repeat(target / n);
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(
                    format!(r#"{{"id":"tag_{i}","updated_at":1.5,"description":"{pad}"}}"#)
                        .as_bytes(),
                );
            }
        }
    }
    out.extend_from_slice(b"]}");
    out
}

async fn mem() -> Result<(), BoxError> {
    const TARGET: usize = 31 * 1024 * 1024;
    let tiny = bytes::Bytes::from(body(TARGET, None));
    let large = bytes::Bytes::from(body(TARGET, Some(100)));
    let (tiny_len, large_len) = (tiny.len(), large.len());
    let app = axum::Router::new()
        .route(
            "/contacts",
            axum::routing::get(move || {
                let b = tiny.clone();
                async move { ([("content-type", "application/json")], b) }
            }),
        )
        .route(
            "/tags",
            axum::routing::get(move || {
                let b = large.clone();
                async move { ([("content-type", "application/json")], b) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    for (stream, len, what) in [
        ("contacts", tiny_len, "tiny records (limit 100)"),
        ("tags", large_len, "100 records of ~310 KB"),
    ] {
        let bound = 64.0 + 3.0 * len as f64 / (1024.0 * 1024.0);
        println!(
            "front_read_bench mem: {:.1} MiB page of {what}; bound 64 MB + 3 x body = {bound:.0} MB",
            len as f64 / (1024.0 * 1024.0)
        );
        let out = tokio::task::spawn_blocking({
            let base = base.clone();
            move || {
                Command::new(std::env::current_exe()?)
                    .args(["mem-read", &base, stream])
                    .output()
            }
        })
        .await??;
        print!("  reader: {}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            println!("  reader failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    server.abort();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => serve_sim(&args[1..]).await,
        Some("mem-read") => {
            mem_read(
                args.get(1).ok_or("mem-read <base> <stream>")?,
                args.get(2).ok_or("mem-read <base> <stream>")?,
            )
            .await
        }
        Some("mem") => mem().await,
        Some("cpu") => {
            let streams: Vec<String> = args[1..]
                .iter()
                .filter(|a| apex_connect_frontapp::streams::by_name(a).is_some())
                .cloned()
                .collect();
            let flag = |f: &str| args.iter().any(|a| a == f);
            cpu(flag("quick"), flag("map"), &streams).await
        }
        _ => Err("usage: front_read_bench cpu [quick] [map] [stream..] | mem".into()),
    }
}
