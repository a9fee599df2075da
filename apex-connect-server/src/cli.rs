//! The `apex-connect` command line: `serve`, `sync`, `status`, `connect`, `tap`, `rejects`,
//! `platforms`. The binary (in the facade package) is one line:
//! `apex_connect_server::cli::run(apex_connect::platforms())`; the platforms are whatever
//! the host compiled in, and nothing here names one.
//!
//! [`Runner`] runs a parsed command in-process with an output writer and an [`Environment`]
//! of its own, for hosts and tests.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::oauth::CallbackParams;
use apex_connect_core::platform::{Grant, Platforms, oauth_config};
use apex_connect_core::store::{EncryptionKey, StateStore};
use apex_connect_core::{
    ConnectionId, Error, ErrorKind, OAuthClient, Result, StreamId, SyncEngine, SyncOptions,
};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::admin::{RejectView, Status};
use crate::config::{ConnectionConfig, ServerConfig};
use crate::env::Environment;
use crate::{App, connections};

/// Connect a host to its platforms: webhooks, scheduled syncs, Singer taps.
#[derive(Debug, Parser)]
#[command(name = "apex-connect", version, about)]
#[non_exhaustive]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand of [`Cli`].
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
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
    /// Connections and their health, last runs, quarantined records, inbox depth, dead
    /// letters, errors.
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
        /// A Singer catalog: run only the streams and fields it selects.
        #[arg(long, conflicts_with_all = ["properties", "discover"])]
        catalog: Option<PathBuf>,
        /// A legacy Singer properties file (selection as in `--catalog`).
        #[arg(long, conflicts_with = "discover")]
        properties: Option<PathBuf>,
        /// Print the catalog (streams, schemas, metadata) and exit.
        #[arg(long)]
        discover: bool,
        /// The platform API's base URL (simulators, sandboxes).
        #[arg(long)]
        base_url: Option<String>,
    },
    /// Quarantined records: records a sync or a webhook could not read or map.
    Rejects {
        /// `list` or `retry`.
        #[command(subcommand)]
        action: RejectsAction,
    },
    /// The platforms compiled into this build, with the secrets each reads.
    Platforms,
}

/// `apex-connect rejects ...`.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum RejectsAction {
    /// List quarantined records (oldest first).
    List {
        /// Only this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
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
    /// Re-drive quarantined records through the connector (after a fix) into the configured
    /// sink; those that fail again stay, with their new error.
    Retry {
        /// Only this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only this stream.
        #[arg(long)]
        stream: Option<String>,
        /// At most this many per connection.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// The TOML configuration.
        #[arg(
            long,
            short,
            default_value = "apex-connect.toml",
            env = "APEX_CONNECT_CONFIG"
        )]
        config: PathBuf,
    },
}

/// Parses the process arguments and runs the command with `platforms` on a new Tokio
/// runtime; logs go to stderr (`RUST_LOG`; `info` for `serve`, `warn` otherwise), errors are
/// printed on stderr. What the `apex-connect` binary's `main` calls.
pub fn run(platforms: Platforms) -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    // The filter is the fmt layer's own: the run log layer keeps the events of sync runs
    // (INFO and up, stored with each run) whatever RUST_LOG shows on stderr.
    use tracing_subscriber::prelude::*;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        );
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(apex_connect_core::RunLogLayer::new().filtered())
        .try_init();
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
    let runner = Runner::new(platforms);
    let result = runtime.block_on(runner.run(cli, &mut std::io::stdout()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs [`Cli`] commands with a set of platforms, an [`Environment`] (secrets, the encryption
/// key) and an output writer: the whole command line, in-process.
#[derive(Debug, Clone)]
pub struct Runner {
    platforms: Platforms,
    env: Environment,
    shutdown: Option<CancellationToken>,
}

impl Runner {
    /// A runner over `platforms`, reading the process environment.
    pub fn new(platforms: Platforms) -> Self {
        Runner {
            platforms,
            env: Environment::system(),
            shutdown: None,
        }
    }

    /// Reads secrets and the encryption key from `env` instead.
    pub fn with_env(mut self, env: Environment) -> Self {
        self.env = env;
        self
    }

    /// Stops `serve` and `sync` when `token` is cancelled (besides SIGTERM and ctrl-c).
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// Runs one command, writing its output to `out`.
    ///
    /// # Errors
    /// The command's errors (`Config` for a bad configuration, `Unauthenticated` for a refused
    /// authorization, the connectors' and the store's errors).
    pub async fn run(&self, cli: Cli, out: &mut (dyn Write + Send)) -> Result<()> {
        match cli.command {
            Command::Serve { config } => {
                let app = self.open(&config).await?;
                let shutdown = self.shutdown_token();
                app.serve(shutdown).await
            }
            Command::Sync {
                connection,
                stream,
                full,
                config,
            } => self.sync(&config, &connection, stream, full, out).await,
            Command::Status { json, config } => {
                let app = self.open(&config).await?;
                let status = crate::status(&app.state).await;
                app.close().await;
                let status = status?;
                if json {
                    let text = serde_json::to_string_pretty(&status).map_err(|e| {
                        Error::new(ErrorKind::Unexpected, "cannot print the status").set_source(e)
                    })?;
                    writeln!(out, "{text}").map_err(io)?;
                } else {
                    print_status(&status, out)?;
                }
                Ok(())
            }
            Command::Connect {
                platform,
                connection,
                port,
                config,
            } => {
                self.connect(&config, &platform, connection.as_deref(), port, out)
                    .await
            }
            Command::Tap {
                platform,
                config,
                state,
                catalog,
                properties,
                discover,
                base_url,
            } => {
                let catalog = catalog.or(properties);
                self.tap(&platform, &config, state, catalog, discover, base_url, out)
                    .await
            }
            Command::Rejects { action } => match action {
                RejectsAction::List {
                    connection,
                    stream,
                    limit,
                    json,
                    config,
                } => {
                    self.rejects_list(&config, connection, stream, limit, json, out)
                        .await
                }
                RejectsAction::Retry {
                    connection,
                    stream,
                    limit,
                    config,
                } => {
                    self.rejects_retry(&config, connection, stream, limit, out)
                        .await
                }
            },
            Command::Platforms => {
                for p in self.platforms.iter() {
                    writeln!(out, "{}: {}", p.name(), p.description()).map_err(io)?;
                    for s in p.secrets() {
                        writeln!(out, "  secret {}: {}", s.name, s.purpose).map_err(io)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// The encryption key, or a throwaway one (OAuth tokens then can be neither stored nor
    /// read) with a warning.
    fn key(&self) -> EncryptionKey {
        match self.env.encryption_key() {
            Ok(k) => k,
            Err(_) => {
                tracing::warn!(
                    "APEX_CONNECT_KEY is not set: using a throwaway key, so OAuth tokens can be neither stored nor read"
                );
                EncryptionKey::generate()
            }
        }
    }

    async fn open(&self, config: &Path) -> Result<App> {
        App::open_with(
            ServerConfig::load(config)?,
            &self.platforms,
            self.key(),
            &self.env,
        )
        .await
    }

    fn shutdown_token(&self) -> CancellationToken {
        let token = CancellationToken::new();
        tokio::spawn(signals(token.clone()));
        if let Some(external) = &self.shutdown {
            let (external, token) = (external.clone(), token.clone());
            tokio::spawn(async move {
                external.cancelled().await;
                token.cancel();
            });
        }
        token
    }

    async fn sync(
        &self,
        config: &Path,
        connection: &str,
        stream: Option<String>,
        full: bool,
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let app = self.open(config).await?;
        let result = sync_app(&app, connection, stream, full, self.shutdown_token(), out).await;
        app.close().await;
        result
    }

    async fn connect(
        &self,
        config: &Path,
        platform: &str,
        connection: Option<&str>,
        port: u16,
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let config = ServerConfig::load(config)?;
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
        let (descriptor, settings) = connections::check(&self.platforms, conn)?;
        if let Some(defaults) = descriptor.oauth(&settings)?
            && !defaults.supports(Grant::AuthorizationCode)
        {
            return Err(Error::config(
                "the platform has no authorization-code grant: nothing to connect in a browser",
            )
            .with_context("platform", platform));
        }
        let secrets = self.env.secrets(conn);
        let oauth = oauth_config(descriptor.as_ref(), &settings, &secrets)?.ok_or_else(|| {
            Error::config(
                "OAuth needs a `client_id` setting (and `token_url`, `auth_url` unless the \
                 platform has defaults), and `client_secret` in the connection's `env`",
            )
            .with_context("connection", &conn.id)
        })?;
        // Fail before the user consents if the tokens could not be stored afterwards.
        let key = self.env.encryption_key()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| Error::config("cannot listen for the OAuth callback").set_source(e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::config("no local address").set_source(e))?;
        let redirect = format!("http://127.0.0.1:{}/callback", addr.port());
        let client = OAuthClient::with_default_http(oauth.with_redirect_url(redirect))?;
        let request = client.authorize_url()?;
        writeln!(
            out,
            "Open this URL to authorize {}:\n\n  {}\n",
            conn.id, request.url
        )
        .map_err(io)?;
        writeln!(
            out,
            "Waiting for the callback on http://{addr}/callback ..."
        )
        .map_err(io)?;
        out.flush().map_err(io)?;
        let callback = wait_for_callback(listener)
            .await
            .map_err(|e| e.with_context("connection", &conn.id))?;
        let tokens = client
            .exchange_code(&callback, &request.state, &request.pkce_verifier)
            .await?;
        let opened = apex_connect_core::store::open(&config.store_location(), key).await?;
        let stored = connections::store_tokens(
            opened.store(),
            &ConnectionId::from(conn.id.clone()),
            &tokens,
        )
        .await;
        opened.close().await;
        stored?;
        writeln!(out, "Tokens stored (encrypted) for {}.", conn.id).map_err(io)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn tap(
        &self,
        platform: &str,
        config: &Path,
        state: Option<PathBuf>,
        catalog: Option<PathBuf>,
        discover: bool,
        base_url: Option<String>,
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let text = read_file(config, "the tap configuration")?;
        let mut connection = crate::config::parse_tap_config(platform, &text)?;
        if base_url.is_some() {
            connection.base_url = base_url;
        }
        let state =
            match state {
                Some(path) => {
                    let text = read_file(&path, "the state file")?;
                    if text.trim().is_empty() {
                        None
                    } else {
                        Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                            Error::config("the state file is not JSON").set_source(e)
                        })?)
                    }
                }
                None => None,
            };
        let catalog = match catalog {
            Some(path) => Some(
                serde_json::from_str::<Value>(&read_file(&path, "the catalog")?)
                    .map_err(|e| Error::config("the catalog is not JSON").set_source(e))?,
            ),
            None => None,
        };
        // A tap keeps no state of its own: tokens live in memory for the run.
        let opened = apex_connect_core::store::open("memory:", EncryptionKey::generate()).await?;
        let store: Arc<dyn StateStore> = opened.store().clone();
        let secrets = self.env.secrets(&connection);
        let connector =
            connections::build_with_secrets(&self.platforms, &connection, &secrets, &store).await?;
        let streams: Vec<StreamId> = connection
            .streams
            .iter()
            .cloned()
            .map(StreamId::from)
            .collect();
        let mut w = std::io::BufWriter::new(out);
        if discover {
            let catalog = crate::tap::discover(connector.as_ref(), &streams).await?;
            serde_json::to_writer_pretty(&mut w, &catalog).map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot print the catalog").set_source(e)
            })?;
            writeln!(w).map_err(io)?;
            return w.flush().map_err(io);
        }
        let plan = match &catalog {
            Some(c) => crate::tap::plan_from_catalog(connector.as_ref(), c)?,
            None => crate::tap::plan_all(connector.as_ref(), &streams).await?,
        };
        crate::tap::run_tap(connector.as_ref(), &plan, state, &mut w).await?;
        w.flush().map_err(io)
    }

    async fn rejects_list(
        &self,
        config: &Path,
        connection: Option<String>,
        stream: Option<String>,
        limit: usize,
        json: bool,
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let config = ServerConfig::load(config)?;
        // Listing needs the store only (no connector, no key: rejects are not encrypted).
        let opened =
            apex_connect_core::store::open(&config.store_location(), EncryptionKey::generate())
                .await?;
        let connection = connection.map(ConnectionId::from);
        let stream = stream.map(StreamId::from);
        let rows = opened
            .store()
            .list_rejects(connection.as_ref(), stream.as_ref(), limit)
            .await;
        opened.close().await;
        let views: Vec<RejectView> = rows?.iter().map(RejectView::new).collect();
        if json {
            let text = serde_json::to_string_pretty(&views).map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot print the rejects").set_source(e)
            })?;
            writeln!(out, "{text}").map_err(io)?;
            return Ok(());
        }
        if views.is_empty() {
            writeln!(out, "No quarantined records.").map_err(io)?;
        }
        for r in &views {
            writeln!(
                out,
                "#{} {}/{} {} ({} stage, {} bytes, {} attempts, last {}): {}",
                r.id,
                r.connection,
                r.stream,
                r.record_id.as_deref().unwrap_or("(no id)"),
                r.stage,
                r.bytes,
                r.attempts,
                fmt_ms(r.last_seen_at),
                r.error
            )
            .map_err(io)?;
        }
        Ok(())
    }

    async fn rejects_retry(
        &self,
        config: &Path,
        connection: Option<String>,
        stream: Option<String>,
        limit: usize,
        out: &mut (dyn Write + Send),
    ) -> Result<()> {
        let app = self.open(config).await?;
        let result = redrive(&app, connection, stream, limit, out).await;
        app.close().await;
        result
    }
}

async fn redrive(
    app: &App,
    connection: Option<String>,
    stream: Option<String>,
    limit: usize,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let engine = SyncEngine::new(app.state.store().clone());
    let stream = stream.map(StreamId::from);
    if let Some(c) = &connection
        && app
            .state
            .connection(&ConnectionId::from(c.clone()))
            .is_none()
    {
        return Err(
            Error::config("no such connection in the configuration").with_context("connection", c)
        );
    }
    let mut failed = 0;
    for handle in app.state.connections() {
        if connection
            .as_deref()
            .is_some_and(|c| c != handle.id.as_str())
        {
            continue;
        }
        let report = engine
            .redrive(
                handle.connector.as_ref(),
                &handle.id,
                stream.as_ref(),
                app.sink.as_ref(),
                limit,
            )
            .await?;
        failed += report.failed;
        writeln!(
            out,
            "{}{}: {} tried, {} written, {} failed again",
            handle.id,
            stream.as_ref().map(|s| format!("/{s}")).unwrap_or_default(),
            report.tried,
            report.written,
            report.failed
        )
        .map_err(io)?;
    }
    if failed > 0 {
        writeln!(
            out,
            "{failed} still quarantined: `apex-connect rejects list` shows their errors"
        )
        .map_err(io)?;
    }
    Ok(())
}

/// Serves `GET /callback` on `listener` until the first answer: the code and state, or the
/// platform's error (`?error=access_denied`).
async fn wait_for_callback(listener: tokio::net::TcpListener) -> Result<CallbackParams> {
    type Answer = std::result::Result<CallbackParams, String>;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Answer>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |q: axum::extract::Query<HashMap<String, String>>| {
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
        }),
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
    match answer {
        Some(Ok(c)) => Ok(c),
        Some(Err(error)) => Err(Error::new(
            ErrorKind::Unauthenticated,
            "the authorization was refused or failed",
        )
        .with_context("error", error)),
        None => Err(Error::config("the callback server stopped")),
    }
}

fn io(e: std::io::Error) -> Error {
    Error::new(ErrorKind::Unexpected, "cannot write the output").set_source(e)
}

fn read_file(path: &Path, what: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::config("cannot read a file")
            .with_context("file", what)
            .with_context("path", path.display())
            .set_source(e)
    })
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
            _ = shutdown.cancelled() => return,
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = shutdown.cancelled() => return,
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

async fn sync_app(
    app: &App,
    connection: &str,
    stream: Option<String>,
    full: bool,
    cancel: CancellationToken,
    out: &mut (dyn Write + Send),
) -> Result<()> {
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
                    "{} read, {} applied, {} unchanged, {} rejected, {} pages",
                    p.records_read, p.applied, p.unchanged, p.rejected, p.pages
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
            Ok(r) => {
                let line = format!(
                    "done: {} read, {} applied, {} unchanged, {} rejected, {} pages in {:.1}s",
                    r.records_read,
                    r.applied,
                    r.unchanged,
                    r.rejected,
                    r.pages,
                    r.elapsed.as_secs_f64()
                );
                bar.finish_and_clear();
                writeln!(out, "{connection}/{s} {line}").map_err(io)?;
                if r.rejected > 0 {
                    writeln!(
                        out,
                        "  {} records quarantined: `apex-connect rejects list --connection {connection}`",
                        r.rejected
                    )
                    .map_err(io)?;
                }
            }
            Err(e) => {
                bar.abandon_with_message("failed");
                if e.context_value("action") == Some("needs re-authorization") {
                    // The token manager's hook marks it too, but in a task this process may
                    // not wait for: record it before exiting.
                    let platform = handle.platform.clone();
                    if let Err(mark) =
                        connections::mark_needs_reauth(app.state.store().as_ref(), &id, &platform)
                            .await
                    {
                        tracing::warn!(error = %mark, "cannot record that the connection needs re-authorization");
                    }
                    return Err(e.with_context(
                        "fix",
                        format!("run `apex-connect connect {platform} --connection {connection}`"),
                    ));
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn print_status(s: &Status, out: &mut (dyn Write + Send)) -> Result<()> {
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(text, "Connections:");
    for c in &s.connections {
        let _ = writeln!(
            text,
            "  {} ({}) {}{}{}",
            c.id,
            c.platform,
            c.status,
            c.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
            if c.rejects > 0 {
                format!(", {} records quarantined", c.rejects)
            } else {
                String::new()
            }
        );
        for r in &c.last_runs {
            let _ = writeln!(
                text,
                "    {:<16} last run #{} {} {} at {} ({} read, {} applied, {} rejected){}",
                r.stream,
                r.id,
                r.kind,
                r.status,
                fmt_ms(r.started_at),
                r.records_read,
                r.records_applied,
                r.records_rejected,
                r.error
                    .as_deref()
                    .map(|e| format!(" error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        text,
        "Inbox: {} pending, {} in flight, {} done, {} dead",
        s.inbox.pending, s.inbox.in_flight, s.inbox.done, s.inbox.dead
    );
    if s.rejects > 0 {
        let _ = writeln!(
            text,
            "Quarantined records: {} (`apex-connect rejects list`, `apex-connect rejects retry`)",
            s.rejects
        );
    }
    if !s.schedules.is_empty() {
        let _ = writeln!(text, "Schedules:");
        for j in &s.schedules {
            let _ = writeln!(
                text,
                "  {}/{} {}: next {}, {} runs, last {}{}",
                j.connection,
                j.stream,
                j.spec,
                fmt_ms(j.next_due_at),
                j.runs,
                j.last_status.map(|s| s.as_str()).unwrap_or("-"),
                j.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    if !s.dead_letters.is_empty() {
        let _ = writeln!(
            text,
            "Dead letters (retry: POST /admin/dead-letters/{{id}}/retry):"
        );
        for d in &s.dead_letters {
            let _ = writeln!(
                text,
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
        let _ = writeln!(text, "Recent errors:");
        for r in &s.recent_errors {
            let _ = writeln!(
                text,
                "  run #{} {}/{} at {}: {}",
                r.id,
                r.connection,
                r.stream,
                fmt_ms(r.started_at),
                r.error.as_deref().unwrap_or("-")
            );
        }
    }
    out.write_all(text.as_bytes()).map_err(io)
}
