//! The Front simulator as a standalone process, for benchmarks that run the connector (or
//! `apex-connect tap frontapp`) in another process.
//!
//! ```sh
//! cargo run --release -p apex-connect-frontapp --features sim --example front_sim -- \
//!     --port 8765 --conversations 20000 --contacts 20000
//! # stdout: http://127.0.0.1:8765   (one line, then it serves until killed)
//! ```
//!
//! Options (all optional): `--port N` (default: a free port), `--conversations N` (default
//! 1,000), `--messages-per-conversation N` (default 5), `--contacts N` (default 800),
//! `--tags N` (default 40), `--seed N` (default 42), `--rate-limit N/SECS` (e.g. `100/60`:
//! Front's headers and 429s; default: none). The API token is `front-sim-api-token` (also
//! printed on stderr with the sizes); OAuth and webhooks work as with `FrontSim` in-process.

use std::io::Write as _;
use std::time::Duration;

use apex_connect_frontapp::{FrontSim, FrontSimConfig};
use secrecy::ExposeSecret;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, BoxError> {
    let text = value.ok_or_else(|| format!("{flag} needs a value"))?;
    text.parse()
        .map_err(|_| format!("{flag}: `{text}` is not a number").into())
}

fn config(args: impl Iterator<Item = String>) -> Result<FrontSimConfig, BoxError> {
    let mut c = FrontSimConfig::realistic().tags(40);
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--port" => c = c.port(number(&flag, args.next())?),
            "--conversations" => c.conversations = number(&flag, args.next())?,
            "--messages-per-conversation" => {
                c.messages_per_conversation = number(&flag, args.next())?;
            }
            "--contacts" => c = c.contacts(number(&flag, args.next())?),
            "--tags" => c = c.tags(number(&flag, args.next())?),
            "--seed" => c = c.seed(number(&flag, args.next())?),
            "--rate-limit" => {
                let text = args.next().ok_or("--rate-limit needs N/SECS")?;
                let (n, secs) = text
                    .split_once('/')
                    .ok_or("--rate-limit is requests/seconds, e.g. 100/60")?;
                c = c.rate_limit(
                    number(&flag, Some(n.to_string()))?,
                    Duration::from_secs(number(&flag, Some(secs.to_string()))?),
                );
            }
            "--help" | "-h" => {
                return Err("usage: front_sim [--port N] [--conversations N] \
                    [--messages-per-conversation N] [--contacts N] [--tags N] [--seed N] \
                    [--rate-limit N/SECS]"
                    .into());
            }
            other => return Err(format!("unknown option `{other}` (see --help)").into()),
        }
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let config = config(std::env::args().skip(1))?;
    let sim = FrontSim::start(config).await?;
    eprintln!(
        "front_sim: {} conversations x {} messages, {} contacts; api token {}",
        sim.count("conversations"),
        sim.config().messages_per_conversation,
        sim.count("contacts"),
        sim.api_token().expose_secret()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", sim.base_url())?;
    out.flush()?;
    drop(out);
    // Serve until killed.
    std::future::pending::<()>().await;
    Ok(())
}
