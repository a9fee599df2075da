//! A standalone HubSpot simulator process, for benchmarks that run the client (e.g.
//! `apex-connect tap hubspot`) as a separate process.
//!
//! ```text
//! cargo run --release -p apex-connect-hubspot --features sim --example hubspot_sim -- \
//!     --port 8090 --contacts 300000 --companies 1000 --deals 1000 --limit 190/10s
//! ```
//!
//! Prints its base URL on the first line of standard output and the private app token it
//! accepts on the second (`private_app_token=...`), then serves until killed (Ctrl-C or a
//! signal). Options: `--port N` (default 0: any free port), `--contacts N`, `--companies N`,
//! `--deals N`, `--engagements N` (each type; default 0), `--owners N` (default 10),
//! `--limit N/10s` (HubSpot's rolling window; `none` for no limit, the default),
//! `--search-limit N/s` (default 5), `--seed N`.

use std::net::SocketAddr;

use apex_connect_hubspot::{HubSpotSim, HubSpotSimConfig};

fn usage(problem: &str) -> ! {
    eprintln!(
        "hubspot_sim: {problem}\nusage: hubspot_sim [--port N] [--contacts N] [--companies N] [--deals N] \
         [--engagements N] [--owners N] [--limit N/10s|none] [--search-limit N/s|none] [--seed N]"
    );
    std::process::exit(2)
}

fn number(flag: &str, value: Option<String>) -> u64 {
    let Some(v) = value else {
        usage(&format!("{flag} needs a value"))
    };
    v.replace('_', "")
        .parse()
        .unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
}

/// `190/10s`, `190` or `none` (a rate per `unit`).
fn rate(flag: &str, value: Option<String>, unit: &str) -> Option<u32> {
    let Some(v) = value else {
        usage(&format!("{flag} needs a value"))
    };
    if v.eq_ignore_ascii_case("none") {
        return None;
    }
    let n = v.strip_suffix(unit).unwrap_or(&v);
    let n = n.strip_suffix('/').unwrap_or(n);
    Some(
        n.parse()
            .unwrap_or_else(|_| usage(&format!("{flag}: expected N{unit} or none, got {v}"))),
    )
}

#[tokio::main]
async fn main() {
    let mut config = HubSpotSimConfig::default()
        .size(1_000, 100, 100)
        .engagements(0)
        .owners(10)
        .rate_limits(None, Some(5));
    let mut port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => {
                port = u16::try_from(number(&flag, args.next()))
                    .unwrap_or_else(|_| usage("--port: out of range"))
            }
            "--contacts" => config.contacts = number(&flag, args.next()),
            "--companies" => config.companies = number(&flag, args.next()),
            "--deals" => config.deals = number(&flag, args.next()),
            "--engagements" => config.engagements = number(&flag, args.next()),
            "--owners" => config.owners = number(&flag, args.next()),
            "--seed" => config.seed = number(&flag, args.next()),
            "--limit" => config.requests_per_10s = rate(&flag, args.next(), "10s"),
            "--search-limit" => config.search_per_second = rate(&flag, args.next(), "s"),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown option {other}")),
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sim = match HubSpotSim::start_on(config, addr).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("hubspot_sim: {e}");
            std::process::exit(1);
        }
    };
    println!("{}", sim.base_url());
    println!("private_app_token={}", sim.private_app_token());
    eprintln!("hubspot_sim: serving {:?} until killed", sim.config());
    let _ = tokio::signal::ctrl_c().await;
}
