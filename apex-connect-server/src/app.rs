//! The service assembled from a [`ServerConfig`]: store, connectors, sink, router, workers,
//! scheduler.

use std::fmt;
use std::sync::Arc;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::store::{Connection, EncryptionKey, StateStore};
use apex_connect_core::{
    ConnectionId, Error, JsonlSink, NullSink, Result, Sink, SqliteSink, SqliteStore, StreamId,
};
use axum::Router;

use crate::config::{ServerConfig, SinkConfig, parse_duration};
use crate::inbox::InboxAppender;
use crate::ledger::LedgerSink;
use crate::registry::{ConnectorRegistry, FactoryContext, Secrets};
use crate::scheduler::{JobSpec, Scheduler, SchedulerConfig, Schedules};
use crate::state::{ConnectionHandle, ServerState};
use crate::worker::{WorkerConfig, Workers};
use crate::{admin_router, webhook_router};

/// The server's own migrations (`migrations/`), tracked in `_apex_server_migrations` so they
/// live beside the core store's in one database.
///
/// # Errors
/// `Storage` when they cannot run.
pub async fn migrate(pool: &sqlx::SqlitePool) -> Result<()> {
    let mut m = sqlx::migrate!("./migrations");
    m.dangerous_set_table_name("_apex_server_migrations");
    m.run(pool)
        .await
        .map_err(|e| Error::storage("cannot migrate the server tables").set_source(e))
}

/// The running parts of the `apex-connect` service.
pub struct App {
    /// The configuration.
    pub config: ServerConfig,
    /// The store.
    pub store: SqliteStore,
    /// The shared state (connections, appender, counters).
    pub state: ServerState,
    /// The sink.
    pub sink: Arc<dyn Sink>,
    /// The schedules table.
    pub schedules: Schedules,
    jobs: Vec<JobSpec>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("state", &self.state)
            .field("sink", &self.sink)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl App {
    /// Opens the database, runs the migrations, builds every connection's connector with its
    /// secrets from the environment, and registers the schedules.
    ///
    /// # Errors
    /// `Config` for an unknown platform, a missing secret or a bad schedule; `Storage`.
    pub async fn open(
        config: ServerConfig,
        registry: &ConnectorRegistry,
        key: EncryptionKey,
    ) -> Result<App> {
        let store = SqliteStore::open(&config.database, key).await?;
        migrate(store.pool()).await?;
        let dyn_store: Arc<dyn StateStore> = Arc::new(store.clone());
        let schedules = Schedules::new(store.pool().clone());
        let mut builder = ServerState::builder(dyn_store.clone())
            .appender(InboxAppender::group_commit(
                store.pool().clone(),
                config.webhooks.max_batch,
            ))
            .body_limit(config.webhooks.body_limit)
            .schedules(schedules.clone());
        let mut jobs = Vec::new();
        for c in &config.connections {
            let secrets = Secrets::from_env(c);
            let oauth_tokens = if crate::registry::has_oauth(c) {
                match dyn_store.load(&ConnectionId::from(c.id.clone())).await {
                    Ok(t) => t.is_some(),
                    Err(e) => {
                        // Stored but unreadable (another key?): use OAuth, so the error shows
                        // at first use instead of silently falling back to a static token.
                        tracing::warn!(connection = %c.id, error = %e, "cannot read the stored OAuth tokens");
                        true
                    }
                }
            } else {
                false
            };
            let connector = registry.build(
                FactoryContext::new(c, &secrets, &dyn_store).with_oauth_tokens(oauth_tokens),
            )?;
            let streams: Vec<StreamId> = c.streams.iter().cloned().map(StreamId::from).collect();
            let handle = ConnectionHandle::new(c.id.clone(), connector).with_streams(streams);
            for s in &c.schedules {
                let targets: Vec<StreamId> = match &s.stream {
                    Some(one) => vec![StreamId::from(one.clone())],
                    None => handle.streams.clone(),
                };
                for stream in targets {
                    let job = match (&s.every, &s.cron) {
                        (Some(every), _) => JobSpec::every(
                            c.id.clone(),
                            stream,
                            parse_duration(every)?,
                            s.jitter
                                .as_deref()
                                .map(parse_duration)
                                .transpose()?
                                .unwrap_or_default(),
                        ),
                        (None, Some(cron)) => JobSpec::cron(c.id.clone(), stream, cron)?,
                        (None, None) => {
                            return Err(Error::config("a schedule needs `every` or `cron`"));
                        }
                    };
                    jobs.push(job.full(s.full));
                }
            }
            // Keep the stored status (an operator may have disabled it, or it needs re-auth).
            let id = ConnectionId::from(c.id.clone());
            let settings = serde_json::to_value(&c.settings).unwrap_or(serde_json::Value::Null);
            let mut row = Connection::new(
                id.clone(),
                c.platform.clone(),
                serde_json::json!({
                    "base_url": c.base_url, "streams": c.streams, "settings": settings,
                }),
            );
            if let Some(existing) = dyn_store.get_connection(&id).await? {
                row = row.with_status(existing.status, existing.status_detail);
            }
            dyn_store.upsert_connection(&row).await?;
            builder = builder.connection(handle);
        }
        let sink: Arc<dyn Sink> = match &config.sink {
            SinkConfig::Sqlite => Arc::new(SqliteSink::for_store(&store)),
            SinkConfig::Ledger => Arc::new(LedgerSink::new(store.pool().clone())),
            SinkConfig::Jsonl { path } => Arc::new(JsonlSink::open(path).await?),
            SinkConfig::Null => Arc::new(NullSink::new()),
        };
        // Register the schedules now (keeping stored due times), so `status` shows them.
        let now = apex_connect_core::webhook::unix_ms(std::time::SystemTime::now());
        for job in &jobs {
            schedules.upsert(job, now).await?;
        }
        Ok(App {
            state: builder.build(),
            store,
            sink,
            schedules,
            jobs,
            config,
        })
    }

    /// The workers configured by `[workers]`.
    ///
    /// # Errors
    /// `Config` for a bad duration.
    pub fn workers(&self) -> Result<Workers> {
        let w = &self.config.workers;
        let c = WorkerConfig {
            concurrency: w.concurrency,
            batch: w.batch,
            lease: parse_duration(&w.lease)?,
            max_attempts: w.max_attempts,
            backoff: parse_duration(&w.backoff)?,
            max_backoff: parse_duration(&w.max_backoff)?,
            poll: parse_duration(&w.poll)?,
            // These sinks write to the state database: serialize with the inbox writer.
            gate_sink_writes: matches!(self.config.sink, SinkConfig::Sqlite | SinkConfig::Ledger),
            ..WorkerConfig::default()
        };
        Ok(Workers::new(self.state.clone(), self.sink.clone(), c))
    }

    /// The scheduler configured by `[scheduler]` and the connections' schedules.
    ///
    /// # Errors
    /// `Config`, `Storage`.
    pub async fn scheduler(&self) -> Result<Scheduler> {
        let s = &self.config.scheduler;
        let c = SchedulerConfig {
            lease: parse_duration(&s.lease)?,
            poll: parse_duration(&s.poll)?,
            backoff: parse_duration(&s.backoff)?,
            max_backoff: parse_duration(&s.max_backoff)?,
            ..SchedulerConfig::default()
        };
        Scheduler::new(
            self.state.clone(),
            self.schedules.clone(),
            self.jobs.clone(),
            self.sink.clone(),
            c,
        )
        .await
    }

    /// Webhooks (plus the admin API unless `admin_listen` is set).
    pub fn router(&self) -> Router {
        let r = webhook_router(self.state.clone());
        if self.config.admin_listen.is_none() {
            r.merge(admin_router(self.state.clone()))
        } else {
            r
        }
    }

    /// Serves webhooks, the admin API, the workers and the scheduler until `shutdown`; then
    /// stops accepting, lets workers finish or release their batches, cancels scheduled runs
    /// (their leases released), and closes the database.
    ///
    /// # Errors
    /// `Config` when an address cannot be bound.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::config("cannot listen")
                    .with_context("address", addr)
                    .set_source(e)
            })
        };
        let listener = bind(self.config.listen).await?;
        tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening");
        let mut tasks = tokio::task::JoinSet::new();
        let http = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tasks.spawn(async move {
            if let Err(e) = http.await {
                tracing::warn!(error = %e, "http server stopped");
            }
        });
        if let Some(addr) = self.config.admin_listen {
            let admin = axum::serve(bind(addr).await?, admin_router(self.state.clone()))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            tasks.spawn(async move {
                if let Err(e) = admin.await {
                    tracing::warn!(error = %e, "admin server stopped");
                }
            });
        }
        let workers = self.workers()?;
        let w_shutdown = shutdown.clone();
        tasks.spawn(async move { workers.run(w_shutdown).await });
        let scheduler = self.scheduler().await?;
        let s_shutdown = shutdown.clone();
        tasks.spawn(async move { scheduler.run(s_shutdown).await });
        while tasks.join_next().await.is_some() {}
        // The HTTP servers answered every request they accepted (each after its commit).
        self.store.close().await;
        Ok(())
    }
}
