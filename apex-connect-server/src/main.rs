//! The `apex-connect` binary: `serve`, `sync`, `status`, `connect`, `tap`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::oauth::CallbackParams;
use apex_connect_core::store::{ConnectionStatus, EncryptionKey, StateStore};
use apex_connect_core::{
    ConnectionId, Error, OAuthClient, Result, StreamId, SyncEngine, SyncOptions, TokenStore,
};
use apex_connect_server::config::ConnectionConfig;
use apex_connect_server::registry::{FactoryContext, Secrets};
use apex_connect_server::{App, ConnectorRegistry, ServerConfig};
use clap::{Parser, Subcommand};

/// Connect a host to FrontApp, HubSpot and more: webhooks, scheduled syncs, Singer taps.
#[derive(Debug, Parser)]
#[command(name = "apex-connect", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve webhooks, run the inbox workers and the scheduler until SIGTERM or ctrl-c.
    Serve {
        /// The TOML configuration.
        #[arg(
            long,
            short,
            default_value = "apex-connect.toml",
            env = "APEX_CONNECT_CONFIG"
        )]
        config: PathBuf,
    },
    /// Sync one connection now, with a progress bar.
    Sync {
        /// The connection id.
        connection: String,
        /// Only this stream (default: the connection's streams).
        #[arg(long)]
        stream: Option<String>,
        /// Read from the beginning instead of the stored cursor.
        #[arg(long)]
        full: bool,
        /// The TOML configuration.
        #[arg(
            long,
            short,
            default_value = "apex-connect.toml",
            env = "APEX_CONNECT_CONFIG"
        )]
        config: PathBuf,
    },
    /// Connections and their health, last runs, inbox depth, dead letters, errors.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The TOML configuration.
        #[arg(
            long,
            short,
            default_value = "apex-connect.toml",
            env = "APEX_CONNECT_CONFIG"
        )]
        config: PathBuf,
    },
    /// Authorize a connection with OAuth (state + PKCE) and store its tokens encrypted.
    Connect {
        /// The platform.
        platform: String,
        /// The connection (default: the only connection of this platform).
        #[arg(long)]
        connection: Option<String>,
        /// The local callback port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// The TOML configuration.
        #[arg(
            long,
            short,
            default_value = "apex-connect.toml",
            env = "APEX_CONNECT_CONFIG"
        )]
        config: PathBuf,
    },
    /// Run a connector as a Singer tap: SCHEMA, RECORD and STATE messages on stdout.
    Tap {
        /// The platform.
        platform: String,
        /// The tap configuration (JSON or TOML; no secrets: name env variables in `env`).
        #[arg(long)]
        config: PathBuf,
        /// A state file (the value of a previous run's last STATE message).
        #[arg(long)]
        state: Option<PathBuf>,
        /// The platform API's base URL (simulators, sandboxes).
        #[arg(long)]
        base_url: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn registry() -> ConnectorRegistry {
    ConnectorRegistry::builtin()
}

fn key() -> EncryptionKey {
    match EncryptionKey::from_env() {
        Ok(k) => k,
        Err(_) => {
            tracing::warn!(
                "APEX_CONNECT_KEY is not set: using a throwaway key, so OAuth tokens can be neither stored nor read"
            );
            EncryptionKey::generate()
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let app = App::open(ServerConfig::load(&config)?, &registry(), key()).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone()));
            app.serve(shutdown).await
        }
        Command::Sync {
            connection,
            stream,
            full,
            config,
        } => sync(ServerConfig::load(&config)?, &connection, stream, full).await,
        Command::Status { json, config } => {
            let app = App::open(ServerConfig::load(&config)?, &registry(), key()).await?;
            let status = apex_connect_server::status(&app.state).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                print_status(&status);
            }
            Ok(())
        }
        Command::Connect {
            platform,
            connection,
            port,
            config,
        } => {
            connect(
                ServerConfig::load(&config)?,
                &platform,
                connection.as_deref(),
                port,
            )
            .await
        }
        Command::Tap {
            platform,
            config,
            state,
            base_url,
        } => tap(&platform, &config, state, base_url).await,
    }
}

async fn signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

async fn sync(
    config: ServerConfig,
    connection: &str,
    stream: Option<String>,
    full: bool,
) -> Result<()> {
    let app = App::open(config, &registry(), key()).await?;
    let id = ConnectionId::from(connection.to_string());
    let handle = app.state.connection(&id).cloned().ok_or_else(|| {
        Error::config("no such connection in the configuration")
            .with_context("connection", connection)
    })?;
    let streams: Vec<StreamId> = match stream {
        Some(s) => vec![StreamId::from(s)],
        None => handle.streams.clone(),
    };
    let engine = SyncEngine::new(app.state.store().clone());
    let cancel = CancellationToken::new();
    tokio::spawn(signals(cancel.clone()));
    for s in streams {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{connection}/{s}"));
        bar.enable_steady_tick(Duration::from_millis(120));
        let pb = bar.clone();
        let options = SyncOptions::new()
            .full(full)
            .cancel(cancel.clone())
            .progress(move |p| {
                pb.set_message(format!(
                    "{} read, {} applied, {} unchanged, {} pages",
                    p.records_read, p.applied, p.unchanged, p.pages
                ));
            });
        let report = engine
            .run(
                handle.connector.as_ref(),
                &id,
                &s,
                app.sink.as_ref(),
                options,
            )
            .await;
        match report {
            Ok(r) => bar.finish_with_message(format!(
                "done: {} read, {} applied, {} unchanged, {} pages in {:.1}s",
                r.records_read,
                r.applied,
                r.unchanged,
                r.pages,
                r.elapsed.as_secs_f64()
            )),
            Err(e) => {
                bar.abandon_with_message("failed");
                if e.context_value("action") == Some("needs re-authorization") {
                    // The token manager's hook marks it too, but in a task this process may
                    // not wait for: record it before exiting.
                    let platform = app
                        .config
                        .connection(connection)
                        .map(|c| c.platform.clone())
                        .unwrap_or_default();
                    if let Err(mark) = apex_connect_server::registry::mark_needs_reauth(
                        app.state.store().as_ref(),
                        &id,
                        &platform,
                    )
                    .await
                    {
                        tracing::warn!(error = %mark, "cannot record that the connection needs re-authorization");
                    }
                    app.store.close().await;
                    return Err(e.with_context(
                        "fix",
                        format!("run `apex-connect connect {platform} --connection {connection}`"),
                    ));
                }
                return Err(e);
            }
        }
    }
    app.store.close().await;
    Ok(())
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_status(s: &apex_connect_server::Status) {
    println!("Connections:");
    for c in &s.connections {
        println!(
            "  {} ({}) {}{}",
            c.id,
            c.platform,
            c.status,
            c.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        for r in &c.last_runs {
            println!(
                "    {:<16} last run #{} {} {} at {} ({} read, {} applied){}",
                r.stream,
                r.id,
                r.kind,
                r.status,
                fmt_ms(r.started_at),
                r.records_read,
                r.records_applied,
                r.error
                    .as_deref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    println!(
        "Inbox: {} pending, {} in flight, {} done, {} dead",
        s.inbox.pending, s.inbox.in_flight, s.inbox.done, s.inbox.dead
    );
    if !s.schedules.is_empty() {
        println!("Schedules:");
        for j in &s.schedules {
            println!(
                "  {}/{} {}: next {}, {} runs, last {}{}",
                j.connection,
                j.stream,
                j.spec,
                fmt_ms(j.next_due_at),
                j.runs,
                j.last_status.as_deref().unwrap_or("-"),
                j.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    if !s.dead_letters.is_empty() {
        println!("Dead letters (retry: POST /admin/dead-letters/{{id}}/retry):");
        for d in &s.dead_letters {
            println!(
                "  #{} {}/{} event {} after {} attempts: {}",
                d.id,
                d.platform,
                d.connection,
                d.event_id,
                d.attempts,
                d.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    if !s.recent_errors.is_empty() {
        println!("Recent errors:");
        for r in &s.recent_errors {
            println!(
                "  run #{} {}/{} at {}: {}",
                r.id,
                r.connection,
                r.stream,
                fmt_ms(r.started_at),
                r.error.as_deref().unwrap_or("-")
            );
        }
    }
}

async fn tap(
    platform: &str,
    config: &std::path::Path,
    state: Option<PathBuf>,
    base_url: Option<String>,
) -> Result<()> {
    let text = std::fs::read_to_string(config).map_err(|e| {
        Error::config("cannot read the tap configuration")
            .with_context("path", config.display())
            .set_source(e)
    })?;
    let mut connection = apex_connect_server::config::parse_tap_config(platform, &text)?;
    if base_url.is_some() {
        connection.base_url = base_url;
    }
    let state = match state {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::config("cannot read the state file")
                    .with_context("path", path.display())
                    .set_source(e)
            })?;
            if text.trim().is_empty() {
                None
            } else {
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| Error::config("the state file is not JSON").set_source(e))?,
                )
            }
        }
        None => None,
    };
    let store: Arc<dyn StateStore> = Arc::new(apex_connect_core::MemoryStore::new());
    let secrets = Secrets::from_env(&connection);
    let connector = registry().build(FactoryContext::new(&connection, &secrets, &store))?;
    let streams: Vec<StreamId> = connection
        .streams
        .iter()
        .cloned()
        .map(StreamId::from)
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    apex_connect_server::tap::run_tap(connector.as_ref(), &streams, state, &mut out).await?;
    Ok(())
}

async fn connect(
    config: ServerConfig,
    platform: &str,
    connection: Option<&str>,
    port: u16,
) -> Result<()> {
    let candidates: Vec<&ConnectionConfig> = config
        .connections
        .iter()
        .filter(|c| c.platform == platform && connection.is_none_or(|id| c.id == id))
        .collect();
    let [conn] = candidates.as_slice() else {
        return Err(Error::config(
            "name exactly one connection of this platform with --connection",
        )
        .with_context("platform", platform)
        .with_context("matching", candidates.len()));
    };
    let secrets = Secrets::from_env(conn);
    let oauth = apex_connect_server::registry::oauth_config(conn, &secrets)?.ok_or_else(|| {
        Error::config(
            "OAuth needs `client_id` (and `token_url`, `auth_url` unless the platform has \
             defaults) in the connection's settings, and `client_secret` in its `env`",
        )
        .with_context("connection", &conn.id)
    })?;
    // Fail before the user consents if the tokens could not be stored afterwards.
    let key = EncryptionKey::from_env()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| Error::config("cannot listen for the OAuth callback").set_source(e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::config("no local address").set_source(e))?;
    let redirect = format!("http://127.0.0.1:{}/callback", addr.port());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Error::config("cannot build the HTTP client").set_source(e))?;
    let client = OAuthClient::new(oauth.with_redirect_url(redirect), http)?;
    let request = client.authorize_url()?;
    println!(
        "Open this URL to authorize {}:\n\n  {}\n",
        conn.id, request.url
    );
    println!("Waiting for the callback on http://{addr}/callback ...");
    type Answer = std::result::Result<CallbackParams, String>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Answer>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(
            move |q: axum::extract::Query<std::collections::HashMap<String, String>>| {
                let tx = tx.clone();
                async move {
                    let q = q.0;
                    let (answer, page) = match (q.get("code"), q.get("state"), q.get("error")) {
                        (Some(code), Some(state), _) => (
                            Ok(CallbackParams::new(code.clone(), state.clone())),
                            "Authorized: you can close this window and return to the terminal.",
                        ),
                        (_, _, error) => (
                            // The platform's error code (e.g. `access_denied`), never echoed back
                            // with anything else from the query.
                            Err(error
                                .map(|e| e.chars().take(64).collect())
                                .unwrap_or_else(|| "no code in the callback".to_string())),
                            "Authorization failed: see the terminal.",
                        ),
                    };
                    let _ = tx.try_send(answer);
                    page
                }
            },
        ),
    );
    let done = CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(done.clone().cancelled_owned())
            .into_future(),
    );
    let answer = rx.recv().await;
    done.cancel();
    let _ = server.await;
    let callback = match answer {
        Some(Ok(c)) => c,
        Some(Err(error)) => {
            return Err(Error::new(
                apex_connect_core::ErrorKind::Unauthenticated,
                "the authorization was refused or failed",
            )
            .with_context("connection", &conn.id)
            .with_context("error", error));
        }
        None => return Err(Error::config("the callback server stopped")),
    };
    let tokens = client
        .exchange_code(&callback, &request.state, &request.pkce_verifier)
        .await?;
    let store = apex_connect_core::SqliteStore::open(&config.database, key).await?;
    let id = ConnectionId::from(conn.id.clone());
    let expected = store.load(&id).await.ok().flatten().map(|v| v.version);
    store.save(&id, &tokens, expected).await?;
    // A connection that needed re-authorization is active again.
    if let Some(c) = store.get_connection(&id).await?
        && c.status == ConnectionStatus::NeedsReauth
    {
        store
            .set_connection_status(&id, ConnectionStatus::Active, None)
            .await?;
    }
    store.close().await;
    println!("Tokens stored (encrypted) for {}.", conn.id);
    Ok(())
}
