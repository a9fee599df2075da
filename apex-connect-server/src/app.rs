//! The service assembled from a [`ServerConfig`]: store, connectors, sink, router, workers,
//! scheduler.

use std::fmt;
use std::sync::Arc;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::platform::Platforms;
use apex_connect_core::store::{Connection, EncryptionKey, OpenedStore, SinkKind, StateStore};
use apex_connect_core::{ConnectionId, Error, JsonlSink, NullSink, Result, Sink, StreamId};
use axum::Router;

use crate::config::{ServerConfig, SinkConfig, parse_duration};
use crate::env::Environment;
use crate::inbox::InboxAppender;
use crate::scheduler::{JobSpec, Scheduler, SchedulerConfig};
use crate::state::{ConnectionHandle, ServerState};
use crate::worker::{WorkerConfig, Workers};
use crate::{admin_router, webhook_router};

/// The running parts of the `apex-connect` service.
pub struct App {
    /// The configuration.
    pub config: ServerConfig,
    /// The state store, opened from the configured location
    /// ([`apex_connect_core::store::open`]); close it before exiting.
    pub store: OpenedStore,
    /// The shared state (connections, appender, counters).
    pub state: ServerState,
    /// The sink.
    pub sink: Arc<dyn Sink>,
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

/// The sink a configuration names, from the store's sinks or its own.
///
/// # Errors
/// `Storage` when a JSONL file cannot be opened.
pub async fn sink_for(config: &SinkConfig, store: &OpenedStore) -> Result<Arc<dyn Sink>> {
    Ok(match config {
        SinkConfig::Records { entities: true } => store.sink(SinkKind::Records),
        SinkConfig::Records { entities: false } => store.sink(SinkKind::RawRecords),
        SinkConfig::Ledger => store.sink(SinkKind::Ledger),
        SinkConfig::Jsonl { path } => Arc::new(JsonlSink::open(path).await?),
        SinkConfig::Null => Arc::new(NullSink::new()),
    })
}

impl App {
    /// Opens the store at the configured location, builds every connection's connector
    /// through its platform in `platforms` (settings checked, secrets from the environment,
    /// authentication resolved), records the connections in the store, and registers the
    /// schedules.
    ///
    /// # Errors
    /// `Config` for an unknown platform, a bad setting, a missing secret or a bad schedule;
    /// `Storage`.
    pub async fn open(
        config: ServerConfig,
        platforms: &Platforms,
        key: EncryptionKey,
    ) -> Result<App> {
        Self::open_with(config, platforms, key, &Environment::system()).await
    }

    /// [`App::open`] with the connections' secrets read from `env`.
    ///
    /// # Errors
    /// As [`App::open`].
    pub async fn open_with(
        config: ServerConfig,
        platforms: &Platforms,
        key: EncryptionKey,
        env: &Environment,
    ) -> Result<App> {
        let opened = apex_connect_core::store::open(&config.store_location(), key).await?;
        match Self::assemble(config, platforms, opened.clone(), env).await {
            Ok(app) => Ok(app),
            Err(e) => {
                opened.close().await;
                Err(e)
            }
        }
    }

    async fn assemble(
        config: ServerConfig,
        platforms: &Platforms,
        opened: OpenedStore,
        env: &Environment,
    ) -> Result<App> {
        let store: Arc<dyn StateStore> = opened.store().clone();
        let mut builder = ServerState::builder(store.clone())
            .appender(InboxAppender::group_commit(
                store.clone(),
                config.webhooks.max_batch,
            ))
            .body_limit(config.webhooks.body_limit);
        let mut jobs = Vec::new();
        for c in &config.connections {
            let secrets = env.secrets(c);
            let connector =
                crate::connections::build_with_secrets(platforms, c, &secrets, &store).await?;
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
            if let Some(existing) = store.get_connection(&id).await? {
                row = row.with_status(existing.status, existing.status_detail);
            }
            store.upsert_connection(&row).await?;
            builder = builder.connection(handle);
        }
        let sink = sink_for(&config.sink, &opened).await?;
        // Register the schedules now (keeping stored due times), so `status` shows them.
        let now = apex_connect_core::webhook::unix_ms(std::time::SystemTime::now());
        for job in &jobs {
            store.upsert_schedule(&job.entry(now), now).await?;
        }
        Ok(App {
            state: builder.build(),
            store: opened,
            sink,
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
            gate_sink_writes: matches!(
                self.config.sink,
                SinkConfig::Records { .. } | SinkConfig::Ledger
            ),
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
        Scheduler::new(self.state.clone(), self.jobs.clone(), self.sink.clone(), c).await
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
    /// (their leases released), and closes the store.
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
