//! The service assembled from a [`ServerConfig`]: store, connectors, sink, router, workers,
//! scheduler.

use std::fmt;
use std::sync::Arc;

use apex_connect_core::engine::CancellationToken;
use apex_connect_core::platform::Platforms;
use apex_connect_core::store::{Connection, EncryptionKey, OpenedStore, SinkKind, StateStore};
use apex_connect_core::{
    ConnectionId, Error, FanoutSink, JsonlSink, NullSink, Result, Sink, StreamId,
};
use apex_connect_identity::{EntityGraph, EntityGraphSink, SqliteGraphStore};
use axum::Router;

use crate::admin::{AdminAuth, identity_router};
use crate::config::{IdentitySettings, ServerConfig, SinkConfig, parse_duration};
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
    /// The sink: the `[sink]`'s, followed by the entity graph's when `[identity]` is set
    /// (a [`FanoutSink`]).
    pub sink: Arc<dyn Sink>,
    /// The entity graph (`[identity]`), when identity resolution is on.
    identity: Option<Identity>,
    /// Where the admin token is read (`serve` only).
    env: Environment,
    jobs: Vec<JobSpec>,
    /// The OAuth settings of the connections that connect through a browser.
    oauth: std::collections::BTreeMap<ConnectionId, apex_connect_core::oauth::OAuthConfig>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("state", &self.state)
            .field("sink", &self.sink)
            .field("identity", &self.identity.as_ref().map(|i| &i.graph))
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

/// The entity graph of `[identity]`, and its own database when it has one.
#[derive(Clone)]
struct Identity {
    graph: EntityGraph,
    /// The graph's own SQLite file (`identity.path`), closed with the store; `None` when it
    /// lives in the state database.
    own: Option<SqliteGraphStore>,
}

/// Opens the entity graph `[identity]` configures, with its policy: in `identity.path` when
/// set, else in the state database (which must then be SQLite).
///
/// # Errors
/// `Config` without `identity.path` on a store that is not SQLite; `Storage` when the graph's
/// database cannot be opened or migrated.
pub async fn identity_graph(
    settings: &IdentitySettings,
    store: &OpenedStore,
) -> Result<EntityGraph> {
    Ok(open_identity(settings, store).await?.graph)
}

async fn open_identity(settings: &IdentitySettings, store: &OpenedStore) -> Result<Identity> {
    let (graph_store, own): (Arc<dyn apex_connect_identity::GraphStore>, _) =
        match (&settings.path, store.sqlite()) {
            (Some(path), _) => {
                let s = SqliteGraphStore::open(path)
                    .await
                    .map_err(|e| e.with_context("identity.path", path.display()))?;
                (Arc::new(s.clone()), Some(s))
            }
            (None, Some(state)) => (
                Arc::new(
                    SqliteGraphStore::from_pool(state.pool().clone())
                        .await?
                        .with_write_gate(state.write_gate().clone()),
                ),
                None,
            ),
            (None, None) => (state_graph_elsewhere(store).await?, None),
        };
    let graph = EntityGraph::new(graph_store).with_policy(settings.policy.clone());
    Ok(Identity { graph, own })
}

/// The graph in a state database that is not SQLite: PostgreSQL's (feature `postgres`: every
/// node of a scale-out shares it; its writes are serialized by an advisory lock).
async fn state_graph_elsewhere(
    store: &OpenedStore,
) -> Result<Arc<dyn apex_connect_identity::GraphStore>> {
    #[cfg(feature = "postgres")]
    if let Some(pg) = store.postgres() {
        let graph = apex_connect_identity::PgGraphStore::from_pool(pg.pool().clone()).await?;
        return Ok(Arc::new(graph));
    }
    let _ = store;
    Err(Error::config(
        "`[identity]` keeps its graph in the state database only when the store is SQLite or \
         PostgreSQL: set `identity.path` to a SQLite file for the graph",
    ))
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
        let mut oauth = std::collections::BTreeMap::new();
        for c in &config.connections {
            let secrets = env.secrets(c);
            // The dashboard's "Connect" button: the platform's authorization-code grant.
            let (descriptor, settings) = crate::connections::check(platforms, c)?;
            let browser = descriptor
                .oauth(&settings)?
                .is_none_or(|d| d.supports(apex_connect_core::platform::Grant::AuthorizationCode));
            if browser
                && let Ok(Some(o)) = apex_connect_core::platform::oauth_config(
                    descriptor.as_ref(),
                    &settings,
                    &secrets,
                )
                && o.auth_url.is_some()
            {
                oauth.insert(ConnectionId::from(c.id.clone()), o);
            }
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
        let mut sink = sink_for(&config.sink, &opened).await?;
        // Identity resolution: the graph after the configured sink (which acknowledges).
        let identity = match &config.identity {
            Some(settings) => Some(open_identity(settings, &opened).await?),
            None => None,
        };
        if let Some(identity) = &identity {
            let graph_sink = EntityGraphSink::for_graph(identity.graph.clone());
            sink = Arc::new(FanoutSink::new(sink).with_sink(Arc::new(graph_sink)));
        }
        // Register the schedules now (keeping stored due times), so `status` shows them.
        let now = apex_connect_core::webhook::unix_ms(std::time::SystemTime::now());
        for job in &jobs {
            store.upsert_schedule(&job.entry(now), now).await?;
        }
        Ok(App {
            state: builder.build(),
            store: opened,
            sink,
            identity,
            env: env.clone(),
            jobs,
            oauth,
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
            retention: self.config.retention.parse()?,
            ..SchedulerConfig::default()
        };
        Scheduler::new(self.state.clone(), self.jobs.clone(), self.sink.clone(), c).await
    }

    /// The webhook listener's router: webhooks only.
    pub fn router(&self) -> Router {
        webhook_router(self.state.clone())
    }

    /// Who may call the admin API: the bearer token from `APEX_CONNECT_ADMIN_TOKEN`
    /// ([`crate::ADMIN_TOKEN_ENV`], read from the environment `App` was opened with), or
    /// loopback peers only when it is unset.
    ///
    /// # Errors
    /// `Config` when no token is set and `admin_listen` is not a loopback address, or when the
    /// token is shorter than 16 characters (never shown).
    pub fn admin_auth(&self) -> Result<AdminAuth> {
        admin_auth(&self.config, &self.env)
    }

    /// The entity graph, when `[identity]` is set (for queries: the admin API's
    /// `/admin/entities` and `/admin/merges`, [`identity_router`]).
    pub fn identity(&self) -> Option<&EntityGraph> {
        self.identity.as_ref().map(|i| &i.graph)
    }

    /// The admin listener's router: `/admin` (with the identity endpoints,
    /// [`identity_router`]) and `/metrics` behind [`App::admin_auth`], and the dashboard under
    /// `/ui` ([`App::dashboard`]).
    ///
    /// # Errors
    /// As [`App::admin_auth`].
    pub fn admin_router(&self) -> Result<Router> {
        let auth = self.admin_auth()?;
        Ok(self.admin_routes(auth))
    }

    fn admin_routes(&self, auth: AdminAuth) -> Router {
        admin_router(self.state.clone(), auth.clone())
            .merge(identity_router(self.identity().cloned(), auth.clone()))
            .merge(self.dashboard(auth).router())
    }

    /// Closes the store and the entity graph's own database, if it has one (call it before
    /// the process exits; [`App::serve`] does when it returns).
    pub async fn close(&self) {
        self.store.close().await;
        if let Some(own) = self.identity.as_ref().and_then(|i| i.own.as_ref()) {
            own.close().await;
        }
    }

    /// The dashboard: signs in with `auth`'s token, re-drives into the configured sink, and
    /// connects through OAuth the connections whose platform has an authorization-code grant
    /// and whose client settings are complete.
    pub fn dashboard(&self, auth: AdminAuth) -> crate::Dashboard {
        crate::Dashboard::with_oauth(
            self.state.clone(),
            auth,
            self.sink.clone(),
            self.oauth.clone(),
        )
        .with_identity(self.identity().cloned())
    }

    /// Serves webhooks on `listen` and the admin API on `admin_listen` (two listeners, each
    /// with the `[limits]`: [`crate::listener::serve`]), the workers and the scheduler until
    /// `shutdown`; then stops accepting, lets workers finish or release their batches, cancels
    /// scheduled runs (their leases released), and closes the store.
    ///
    /// # Errors
    /// `Config` when an address cannot be bound, or the admin listener would be reachable
    /// without a token ([`App::admin_auth`]); the store is closed then.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let admin_auth = match self.admin_auth() {
            Ok(auth) => auth,
            Err(e) => {
                self.close().await;
                return Err(e);
            }
        };
        let admin = self.admin_routes(admin_auth.clone());
        let bind = |addr| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::config("cannot listen")
                    .with_context("address", addr)
                    .set_source(e)
            })
        };
        let listener = bind(self.config.listen).await?;
        let admin_listener = bind(self.config.admin_listen).await?;
        let local =
            |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(address = %local(&listener), "webhooks listening");
        tracing::info!(
            address = %local(&admin_listener),
            auth = if admin_auth.has_token() { "bearer token" } else { "none: loopback peers only" },
            "admin API, dashboard (/ui) and /metrics listening"
        );
        let limits = self.config.limits.http_limits();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::listener::serve(
            listener,
            self.router(),
            limits.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::listener::serve(
            admin_listener,
            admin,
            limits,
            shutdown.clone(),
        ));
        let workers = self.workers()?;
        // On PostgreSQL, appends by any node wake this node's idle workers (LISTEN/NOTIFY).
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.store.postgres() {
            match pg.subscribe_inbox().await {
                Ok(wakeups) => {
                    let (workers, shutdown) = (workers.clone(), shutdown.clone());
                    tasks.spawn(async move { workers.wake_on(wakeups, shutdown).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for inbox notifications; workers poll")
                }
            }
        }
        let w_shutdown = shutdown.clone();
        tasks.spawn(async move { workers.run(w_shutdown).await });
        let scheduler = self.scheduler().await?;
        let s_shutdown = shutdown.clone();
        tasks.spawn(async move { scheduler.run(s_shutdown).await });
        // A task that panics (workers and scheduler catch their own panics; this is their
        // supervisor) stops the whole service with an error: never keep acknowledging webhooks
        // with nobody processing them.
        let mut failed = None;
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a service task failed; shutting down");
                shutdown.cancel();
                failed.get_or_insert_with(|| e.to_string());
            }
        }
        // The HTTP servers answered every request they accepted (each after its commit).
        self.close().await;
        match failed {
            Some(task) => Err(Error::new(
                apex_connect_core::ErrorKind::Unexpected,
                "a service task panicked",
            )
            .with_context("task", task)),
            None => Ok(()),
        }
    }
}

/// The admin API's authorization for `config`: the token from the environment, or loopback
/// only, in which case `admin_listen` must be a loopback address.
fn admin_auth(config: &ServerConfig, env: &Environment) -> Result<AdminAuth> {
    let auth = AdminAuth::from_lookup(|name| env.var(name))?;
    let ip = config.admin_listen.ip().to_canonical();
    if !auth.has_token() && !ip.is_loopback() {
        return Err(Error::config(
            "`admin_listen` is not a loopback address and no admin token is set: set \
             APEX_CONNECT_ADMIN_TOKEN (requests then need `Authorization: Bearer <token>`) or \
             listen on 127.0.0.1",
        )
        .with_context("admin_listen", config.admin_listen));
    }
    Ok(auth)
}
