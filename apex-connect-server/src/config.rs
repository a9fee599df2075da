//! The TOML configuration of the `apex-connect` command line and service.
//!
//! Secrets never live in the file (settings are stored in the state database as they are): a
//! key named like a token, secret, password, credential or key (an API key, a private key) is
//! refused anywhere in the file, except inside a connection's own `env` table (an `env` table
//! anywhere else, in `settings` say, is checked like any other), whose values are the *names*
//! of the environment variables holding the secrets (see [`is_secret_name`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apex_connect_core::store::StoreLocation;
use apex_connect_core::{Error, Result};
use serde::Deserialize;

/// The default state database, when neither `store` nor `database` is set.
pub const DEFAULT_DATABASE: &str = "apex-connect.db";

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where the state lives (inbox, cursors, runs, schedules, tokens, rejects), as
    /// `apex_connect_core::store::open` reads it: a SQLite path, a `sqlite:` URL,
    /// `postgres://user@host:port/db` (built with the `postgres` feature; the password from
    /// `PGPASSWORD` or `~/.pgpass`, never here), or `memory:` (nothing kept). Default:
    /// `database`, else `apex-connect.db`.
    #[serde(default)]
    pub store: Option<String>,
    /// The SQLite state database file (the older spelling of `store`; set one of the two).
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Where `serve` listens for webhooks (nothing else is served there). Default
    /// `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where `serve` listens for `/admin` and `/metrics`: always its own listener, never
    /// `listen`. Default `127.0.0.1:9465` ([`DEFAULT_ADMIN_LISTEN`]). Without a token in
    /// `APEX_CONNECT_ADMIN_TOKEN` it must be a loopback address (and answers loopback peers
    /// only); with one, every request needs `Authorization: Bearer <token>`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Limits of the listeners (`[limits]`).
    #[serde(default)]
    pub limits: LimitSettings,
    /// Where records go.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Webhook ingress settings.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    /// Inbox worker settings.
    #[serde(default)]
    pub workers: WorkerSettings,
    /// Scheduler settings.
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    /// The connections.
    #[serde(default, rename = "connection")]
    pub connections: Vec<ConnectionConfig>,
    /// How long done inbox events and sync runs are kept (`[retention]`).
    #[serde(default)]
    pub retention: crate::retention::RetentionSettings,
    /// Identity resolution (`[identity]`): when set, every record written also goes to an
    /// entity graph, queried through the admin API. Off when absent.
    #[serde(default)]
    pub identity: Option<IdentitySettings>,
}

/// `[identity]`: resolve the records the service writes into one canonical entity per
/// customer ([`apex_connect_identity`]).
///
/// ```toml
/// [identity]
/// # path = "identity.db"     # default: the state database (SQLite, or PostgreSQL: shared by every node)
/// [identity.policy]          # apex_connect_identity::Policy; every key optional
/// default_region = "US"
/// source_priority = ["salesforce", "hubspot"]
/// ```
///
/// Every record the service writes (scheduled syncs, `sync`, webhook workers, re-drives) then
/// also goes to an `EntityGraphSink`, after the `[sink]`. The graph wants entities, so every
/// record is mapped by its connector (CPU, even with a sink that keeps raw records only), and a
/// record that cannot be mapped is quarantined (see `apex-connect rejects`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct IdentitySettings {
    /// The SQLite file of the entity graph (created when missing). Default: the state
    /// database itself when the store is SQLite or PostgreSQL (the graph's tables are prefixed
    /// `eg_`; on PostgreSQL every node shares the graph, its writes serialized by an advisory
    /// lock); with a `memory:` store it must be set.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The resolution policy (`[identity.policy]`): phone regions, source priority, external
    /// ids, what merges what; see [`apex_connect_identity::Policy`]. Default: its defaults.
    #[serde(default)]
    pub policy: apex_connect_identity::Policy,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The default admin address (`admin_listen`): loopback, port 9465.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9465);

fn default_admin_listen() -> SocketAddr {
    DEFAULT_ADMIN_LISTEN
}

/// `[limits]`: what one client, or many, may hold of a listener (the webhook listener and the
/// admin listener each apply them). Durations are humantime text (`"10s"`, `"1m 30s"`,
/// `"500ms"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LimitSettings {
    /// A connection must send a whole request head (request line and headers) within this
    /// long after it opened or after its previous response, else it is closed (default
    /// `"10s"`): slow-loris clients are dropped.
    #[serde(with = "humantime_text")]
    pub header_read_timeout: Duration,
    /// A request (its body included) not answered within this long gets `503` +
    /// `Retry-After` (default `"30s"`).
    #[serde(with = "humantime_text")]
    pub request_timeout: Duration,
    /// Requests handled at once per listener; above it `503` + `Retry-After` at once
    /// (default 512).
    pub max_concurrent_requests: usize,
    /// Open connections per listener; a connection accepted above it is closed at once
    /// (default 4096).
    pub max_connections: usize,
    /// Largest request head in bytes (default 16384); larger gets `431`.
    pub max_header_bytes: usize,
    /// Most headers in a request (default 100); more gets `431`.
    pub max_headers: usize,
    /// `Retry-After` of the `503`s above, whole seconds (default `"1s"`).
    #[serde(with = "humantime_text")]
    pub retry_after: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let d = crate::listener::HttpLimits::default();
        LimitSettings {
            header_read_timeout: d.header_read_timeout,
            request_timeout: d.request_timeout,
            max_concurrent_requests: d.max_concurrent_requests,
            max_connections: d.max_connections,
            max_header_bytes: d.max_header_bytes,
            max_headers: d.max_headers,
            retry_after: d.retry_after,
        }
    }
}

impl LimitSettings {
    /// The listener limits these settings describe.
    pub fn http_limits(&self) -> crate::listener::HttpLimits {
        crate::listener::HttpLimits {
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            max_concurrent_requests: self.max_concurrent_requests,
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            retry_after: self.retry_after,
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            (
                "limits.header_read_timeout",
                self.header_read_timeout.is_zero(),
            ),
            ("limits.request_timeout", self.request_timeout.is_zero()),
            (
                "limits.max_concurrent_requests",
                self.max_concurrent_requests == 0,
            ),
            ("limits.max_connections", self.max_connections == 0),
            ("limits.max_headers", self.max_headers == 0),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(Error::config("must be positive").with_context("key", key));
        }
        if self.max_header_bytes < 1024 {
            return Err(Error::config("must be at least 1024")
                .with_context("key", "limits.max_header_bytes"));
        }
        Ok(())
    }
}

/// Serde for a `Duration` written as humantime text (`"10s"`, `"1m 30s"`).
mod humantime_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration (\"10s\", \"1m 30s\"): {e}"
            ))
        })
    }
}

/// Where records go (`[sink]`, `kind = "records" | "ledger" | "jsonl" | "null"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SinkConfig {
    /// The records table of the state store (default; `kind = "sqlite"` is the older name).
    #[serde(alias = "sqlite")]
    Records {
        /// Store each record's normalized entity beside its raw JSON (default `true`); records
        /// that cannot be mapped are quarantined (see `apex-connect rejects`). `false`: raw
        /// JSON only, no mapping runs.
        #[serde(default = "yes")]
        entities: bool,
    },
    /// The ledger of the state store: records plus an apply counter per record, so audits and
    /// tests can prove exactly-once application.
    Ledger,
    /// One JSON line per record, appended to `path`.
    Jsonl {
        /// The file.
        path: PathBuf,
    },
    /// Keep nothing (dry runs, benchmarks).
    Null,
}

fn yes() -> bool {
    true
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig::Records { entities: true }
    }
}

/// `[webhooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct WebhookSettings {
    /// Largest accepted body in bytes (default 1 MiB); larger gets 413.
    pub body_limit: usize,
    /// Most events appended in one group-commit transaction (default 512).
    pub max_batch: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            body_limit: 1024 * 1024,
            max_batch: 512,
        }
    }
}

/// `[workers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct WorkerSettings {
    /// Concurrent worker tasks (default 2).
    pub concurrency: usize,
    /// Events claimed per batch (default 64).
    pub batch: usize,
    /// Lease of a claim (default `"30s"`).
    pub lease: String,
    /// Attempts before an event is dead-lettered (default 5).
    pub max_attempts: u32,
    /// First retry delay, doubled per attempt with jitter (default `"1s"`).
    pub backoff: String,
    /// Longest retry delay (default `"5m"`).
    pub max_backoff: String,
    /// How often idle workers look for due events (default `"200ms"`; new webhooks wake them at once).
    pub poll: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 2,
            batch: 64,
            lease: "30s".into(),
            max_attempts: 5,
            backoff: "1s".into(),
            max_backoff: "5m".into(),
            poll: "200ms".into(),
        }
    }
}

/// `[scheduler]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SchedulerSettings {
    /// Lease of a running job, renewed while it runs (default `"60s"`).
    pub lease: String,
    /// How often the scheduler looks for due jobs (default `"1s"`).
    pub poll: String,
    /// First retry delay of a failed run, doubled per failure (default `"30s"`).
    pub backoff: String,
    /// Longest retry delay (default `"30m"`).
    pub max_backoff: String,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        SchedulerSettings {
            lease: "60s".into(),
            poll: "1s".into(),
            backoff: "30s".into(),
            max_backoff: "30m".into(),
        }
    }
}

/// One `[[connection]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// The host's id for the connection (the `{connection}` of the webhook URL).
    pub id: String,
    /// The platform (`memory`, `frontapp`, `hubspot`, ...).
    pub platform: String,
    /// The platform API's base URL (simulators, sandboxes); the connector's default otherwise.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Streams to sync (default: every stream of the connector).
    #[serde(default)]
    pub streams: Vec<String>,
    /// Scheduled syncs.
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<ScheduleConfig>,
    /// Secret name -> environment variable name, e.g. `api_token = "FRONT_API_TOKEN"`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Platform-specific settings (no secrets), checked by the platform when the
    /// configuration is loaded; the shared authentication settings (`client_id`, `auth`,
    /// `token_url`, ...; see `apex_connect_core::platform::AUTH_SETTINGS`) live here too.
    #[serde(default)]
    pub settings: toml::Table,
}

impl ConnectionConfig {
    /// The settings as the platform reads them (a JSON object).
    ///
    /// # Errors
    /// `Config` for a value JSON cannot hold.
    pub fn settings(&self) -> Result<apex_connect_core::Settings> {
        let value = serde_json::to_value(&self.settings).map_err(|e| {
            Error::config("connection settings cannot be read")
                .with_context("connection", &self.id)
                .set_source(e)
        })?;
        apex_connect_core::Settings::from_value(value)
            .map_err(|e| e.with_context("connection", &self.id))
    }

    /// The connection's secrets, read from the environment variables its `env` table names
    /// (an unset variable is simply absent: the platform says whether it needs it).
    pub fn secrets(&self) -> apex_connect_core::Secrets {
        apex_connect_core::Secrets::from_env_names(
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }
}

/// One `[[connection.schedule]]`: `every` (with `jitter`) or `cron`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ScheduleConfig {
    /// The stream (default: every stream of the connection).
    #[serde(default)]
    pub stream: Option<String>,
    /// Interval, e.g. `"15m"`.
    #[serde(default)]
    pub every: Option<String>,
    /// Random delay added to each interval, e.g. `"30s"`.
    #[serde(default)]
    pub jitter: Option<String>,
    /// Cron expression in UTC: 5 fields (minute first) or 6-7 fields (second first).
    #[serde(default)]
    pub cron: Option<String>,
    /// Full resyncs instead of incremental.
    #[serde(default)]
    pub full: bool,
}

impl ServerConfig {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// `Config` when it cannot be read, is not valid TOML, names a secret, or is inconsistent.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config("cannot read the configuration file")
                .with_context("path", path.display())
                .set_source(e)
        })?;
        Self::parse(&text).map_err(|e| e.with_context("path", path.display()))
    }

    /// Parses and checks configuration text.
    ///
    /// # Errors
    /// As [`ServerConfig::load`].
    pub fn parse(text: &str) -> Result<Self> {
        let value: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config("configuration is not valid TOML").set_source(e))?;
        refuse_secrets(&value, "", connection_table)?;
        let config: ServerConfig = value
            .try_into()
            .map_err(|e| Error::config("configuration is invalid").set_source(e))?;
        config.validate()?;
        Ok(config)
    }

    /// Where the state lives (`store`, else `database`, else [`DEFAULT_DATABASE`]), for
    /// `apex_connect_core::store::open`.
    pub fn store_location(&self) -> String {
        match (&self.store, &self.database) {
            (Some(s), _) => s.clone(),
            (None, Some(d)) => d.display().to_string(),
            (None, None) => DEFAULT_DATABASE.to_string(),
        }
    }

    /// Whether the state store is a SQLite database (the kind [`Self::store_location`] names;
    /// `false` for a malformed location, which opening refuses).
    pub fn store_is_sqlite(&self) -> bool {
        matches!(
            StoreLocation::parse(&self.store_location()),
            Ok(StoreLocation::Sqlite(_))
        )
    }

    /// The kind of store, for messages (never the location: it may name a host).
    fn store_location_kind(&self) -> &'static str {
        match StoreLocation::parse(&self.store_location()) {
            Ok(StoreLocation::Memory) => "memory",
            Ok(StoreLocation::Sqlite(_)) => "sqlite",
            Ok(StoreLocation::Postgres(_)) => "postgres",
            _ => "unknown",
        }
    }

    fn validate(&self) -> Result<()> {
        if self.store.is_some() && self.database.is_some() {
            return Err(Error::config(
                "set one of `store` and `database` (`database` is the older spelling)",
            ));
        }
        if let Some(store) = &self.store {
            refuse_url_password(store, "store")?;
        }
        let (l, a) = (self.listen, self.admin_listen);
        if l.port() == a.port()
            && l.port() != 0
            && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
        {
            return Err(Error::config(
                "`admin_listen` must differ from `listen`: the admin API never shares the \
                 webhook listener",
            )
            .with_context("listen", l)
            .with_context("admin_listen", a));
        }
        self.limits.validate()?;
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.connections {
            if c.id.is_empty()
                || !c
                    .id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(Error::config(
                    "connection ids are non-empty and use only letters, digits, '-', '_' and '.'",
                )
                .with_context("connection", &c.id));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(
                    Error::config("duplicate connection id").with_context("connection", &c.id)
                );
            }
            for (name, var) in &c.env {
                if var.is_empty()
                    || !var
                        .chars()
                        .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
                {
                    // A value that is not an env-var name may be a pasted secret: never echo it.
                    return Err(Error::config(
                        "`env` values are environment variable names (A-Z, 0-9, _), not secrets",
                    )
                    .with_context("connection", &c.id)
                    .with_context("key", name));
                }
            }
            for s in &c.schedules {
                s.validate()
                    .map_err(|e| e.with_context("connection", &c.id))?;
            }
        }
        if let Some(identity) = &self.identity
            && identity.path.is_none()
            && matches!(
                StoreLocation::parse(&self.store_location()),
                Ok(StoreLocation::Memory)
            )
        {
            return Err(Error::config(
                "`[identity]` keeps its graph in the state database only when the store is \
                 SQLite or PostgreSQL: set `identity.path` to a SQLite file for the graph",
            )
            .with_context("store", self.store_location_kind()));
        }
        parse_duration(&self.workers.lease)?;
        parse_duration(&self.workers.backoff)?;
        parse_duration(&self.workers.max_backoff)?;
        parse_duration(&self.workers.poll)?;
        parse_duration(&self.scheduler.lease)?;
        parse_duration(&self.scheduler.poll)?;
        parse_duration(&self.scheduler.backoff)?;
        parse_duration(&self.scheduler.max_backoff)?;
        Ok(())
    }

    /// The connection `id`.
    pub fn connection(&self, id: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.id == id)
    }
}

impl ScheduleConfig {
    fn validate(&self) -> Result<()> {
        match (&self.every, &self.cron) {
            (Some(every), None) => {
                if parse_duration(every)?.is_zero() {
                    return Err(Error::config("schedule `every` must be positive"));
                }
                if let Some(j) = &self.jitter {
                    parse_duration(j)?;
                }
                Ok(())
            }
            (None, Some(cron)) => crate::scheduler::parse_cron(cron).map(|_| ()),
            _ => Err(Error::config(
                "a schedule has exactly one of `every` and `cron`",
            )),
        }
    }
}

/// Whether a configuration key names a secret: it is refused anywhere in the file but inside
/// `env` tables. The name is split into words (at `_`, `-`, `.`, spaces and camelCase humps,
/// lowercased); it is a secret when
/// - its letters contain `token`, `secret`, `password`, `passwd`, `passphrase`, `credential`,
///   `apikey` or `privatekey` (`api_token`, `clientSecret`, `db-password`, `credentials`,
///   `apiKey`), or
/// - one of its words is `key` or `keys` (`key`, `private_key`, `signing-key`, `accessKey`),
///
/// unless it names an endpoint (last word `url` or `uri`: `token_url`) or a key's identifier
/// (`key` followed by `id`: `jwt_key_id`).
pub fn is_secret_name(name: &str) -> bool {
    let words = words(name);
    if words
        .last()
        .is_some_and(|w| w == "url" || w == "uri" || w == "urls")
    {
        return false;
    }
    let joined: String = words.concat();
    const WORDS: [&str; 8] = [
        "token",
        "secret",
        "password",
        "passwd",
        "passphrase",
        "credential",
        "apikey",
        "privatekey",
    ];
    if WORDS.iter().any(|w| joined.contains(w)) {
        return true;
    }
    words.iter().enumerate().any(|(i, w)| {
        (w == "key" || w == "keys") && words.get(i + 1).is_none_or(|next| next != "id")
    })
}

/// `name` split into lowercase words at non-alphanumeric characters and camelCase humps.
fn words(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_alphanumeric() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        current.extend(ch.to_lowercase());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn secret_refused(key: String) -> Error {
    Error::config(
        "secrets are not allowed in the configuration file: put the secret in an \
         environment variable and name it in the connection's `env` table",
    )
    .with_context("key", key)
}

/// Where an `env` table (secret name -> variable name) may be: the table at `path` is a
/// connection (`connection[3]`) of the server configuration.
fn connection_table(path: &str) -> bool {
    path.strip_prefix("connection[")
        .and_then(|rest| rest.strip_suffix(']'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The tap configuration is one connection: its top level.
fn tap_table(path: &str) -> bool {
    path.is_empty()
}

/// Refuses a key named like a secret anywhere in `table`, except the keys of the `env` table
/// of a table `env_allowed` accepts (a connection), whose values must be variable names.
fn refuse_secrets(table: &toml::Table, path: &str, env_allowed: fn(&str) -> bool) -> Result<()> {
    for (key, value) in table {
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        // A connection's `env` maps secret names to variable names: its keys may say "token".
        if key == "env"
            && env_allowed(path)
            && let toml::Value::Table(vars) = value
        {
            for (name, var) in vars {
                let is_name = var.as_str().is_some_and(|v| {
                    !v.is_empty()
                        && v.chars()
                            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
                });
                if !is_name {
                    // A value that is not a variable name may be a pasted secret: never echo it.
                    return Err(Error::config(
                        "`env` values are environment variable names (A-Z, 0-9, _), not secrets",
                    )
                    .with_context("key", format!("{here}.{name}")));
                }
            }
            continue;
        }
        if is_secret_name(key) {
            return Err(secret_refused(here));
        }
        refuse_secrets_in(value, &here, env_allowed)?;
    }
    Ok(())
}

fn refuse_secrets_in(value: &toml::Value, here: &str, env_allowed: fn(&str) -> bool) -> Result<()> {
    match value {
        toml::Value::Table(t) => refuse_secrets(t, here, env_allowed),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                refuse_secrets_in(item, &format!("{here}[{i}]"), env_allowed)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Refuses a URL carrying a password (`postgres://user:password@host/db`): the password
/// belongs in the environment (PostgreSQL clients read `PGPASSWORD`). Never echoes the value.
fn refuse_url_password(url: &str, key: &str) -> Result<()> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Err(Error::config(
                "the store URL holds a password: put it in the environment (PGPASSWORD for \
                 PostgreSQL), not in the configuration file",
            )
            .with_context("key", key));
        }
    }
    Ok(())
}

/// Parses `"250ms"`, `"30s"`, `"15m"`, `"2h"`, `"1d"` (a bare number is seconds).
///
/// # Errors
/// `Config` for anything else.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        Error::config("not a duration (e.g. \"30s\", \"15m\")").with_context("value", text)
    })?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => {
            return Err(
                Error::config("unknown duration unit (ms, s, m, h, d)").with_context("value", text)
            );
        }
    };
    Ok(Duration::from_millis(ms))
}

/// Parses a `tap` configuration (JSON, as Singer taps take, or TOML): the fields of a
/// `[[connection]]` without `platform` (given on the command line); `id` defaults to the
/// platform. Secrets are refused as in the server configuration.
///
/// # Errors
/// `Config` for invalid text, secrets, or unknown fields.
pub fn parse_tap_config(platform: &str, text: &str) -> Result<ConnectionConfig> {
    let mut table: toml::Table = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(json) => strip_nulls(json)
            .and_then(|v| toml::Table::try_from(v).ok())
            .ok_or_else(|| Error::config("the tap configuration is not a JSON object"))?,
        Err(_) => toml::from_str(text).map_err(|e| {
            Error::config("the tap configuration is neither JSON nor TOML").set_source(e)
        })?,
    };
    refuse_secrets(&table, "", tap_table)?;
    table.insert("platform".into(), toml::Value::String(platform.to_string()));
    table
        .entry("id")
        .or_insert_with(|| toml::Value::String(platform.to_string()));
    let c: ConnectionConfig = table
        .try_into()
        .map_err(|e| Error::config("the tap configuration is invalid").set_source(e))?;
    Ok(c)
}

fn strip_nulls(v: serde_json::Value) -> Option<serde_json::Value> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::Object(m) => Some(serde_json::Value::Object(
            m.into_iter()
                .filter_map(|(k, v)| strip_nulls(v).map(|v| (k, v)))
                .collect(),
        )),
        serde_json::Value::Array(a) => Some(serde_json::Value::Array(
            a.into_iter().filter_map(strip_nulls).collect(),
        )),
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = ServerConfig::parse(
            r#"
database = "state.db"
listen = "127.0.0.1:9000"
[sink]
kind = "jsonl"
path = "out.jsonl"
[workers]
max_attempts = 3
[[connection]]
id = "acme-front"
platform = "frontapp"
base_url = "http://127.0.0.1:1"
streams = ["conversations"]
env = { api_token = "FRONT_API_TOKEN", webhook_secret = "FRONT_WEBHOOK_SECRET" }
[[connection.schedule]]
stream = "conversations"
every = "15m"
jitter = "30s"
[[connection.schedule]]
cron = "*/5 * * * *"
"#,
        )
        .unwrap();
        assert_eq!(c.connections[0].schedules.len(), 2);
        assert_eq!(c.workers.max_attempts, 3);
        assert!(matches!(c.sink, SinkConfig::Jsonl { .. }));
        assert_eq!(c.connections[0].env["api_token"], "FRONT_API_TOKEN");
    }

    #[test]
    fn refuses_secrets_anywhere_but_env() {
        for text in [
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\napi_token = \"x\"\n",
            "webhook_secret = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\nclient_password = \"x\"\n",
            // What issue 9 found let through: key, credential, private key, in settings.
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nprivate_key = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nkey = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\ncredentials = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nsigning-key = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nprivateKey = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\naccessKey = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings.jwt]\nkey = \"x\"\n",
            // Nested anywhere: in tables of arrays of arrays too.
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nlist = [[{ api_key = \"x\" }]]\n",
            // Only a connection's own `env` table (or a tap's) names variables: an `env`
            // table anywhere else is checked like any other.
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings.env]\napi_token = \"x\"\n",
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nauth = { env = { private_key = \"x\" } }\n",
            "[sink]\nkind = \"null\"\nenv = { credentials = \"x\" }\n",
            // An `env` that is not a table is no excuse.
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\nenv = [{ secret = \"x\" }]\n",
        ] {
            let e = ServerConfig::parse(text).unwrap_err();
            assert!(e.to_string().contains("secrets are not allowed"), "{e}");
            assert!(!e.to_string().contains("\"x\""));
        }
        // A pasted secret as an env value is refused without echoing it.
        let e = ServerConfig::parse(
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\nenv = { api_token = \"sk-live-abc\" }\n",
        )
        .unwrap_err();
        assert!(!format!("{e:?}").contains("sk-live-abc"));
        // OAuth endpoints are settings, not secrets.
        let c = ServerConfig::parse(
            "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[connection.settings]\n\
             client_id = \"c\"\ntoken_url = \"http://127.0.0.1:1/oauth/token\"\n",
        )
        .unwrap();
        assert!(c.connections[0].settings.contains_key("token_url"));
        // A password in the store URL is refused without echoing it.
        let e = ServerConfig::parse("store = \"postgres://apex:hunter2@db/apex\"\n").unwrap_err();
        assert!(!format!("{e:?}{e}").contains("hunter2"), "{e:?}");
        assert!(ServerConfig::parse("store = \"postgres://apex@db/apex\"\n").is_ok());
    }

    #[test]
    fn tap_configs_refuse_secrets_outside_their_env() {
        assert!(
            parse_tap_config("memory", r#"{"env": {"webhook_secret": "MEMORY_SECRET"}}"#).is_ok()
        );
        for text in [
            r#"{"settings": {"env": {"api_token": "x"}}}"#,
            r#"{"settings": {"private_key": "x"}}"#,
            r#"{"credentials": "x"}"#,
        ] {
            let e = parse_tap_config("memory", text).unwrap_err();
            assert!(
                e.to_string().contains("secrets are not allowed"),
                "{text}: {e}"
            );
        }
        let e = parse_tap_config("memory", r#"{"env": {"api_token": "sk-live-abc"}}"#).unwrap_err();
        assert!(!format!("{e:?}{e}").contains("sk-live-abc"), "{e:?}");
    }

    #[test]
    fn secret_names() {
        for secret in [
            "token",
            "api_token",
            "accessToken",
            "client_secret",
            "webhook-secret",
            "password",
            "db_passwd",
            "passphrase",
            "credential",
            "credentials",
            "gcpCredentials",
            "key",
            "keys",
            "api_key",
            "apikey",
            "API_KEY",
            "private_key",
            "privatekey",
            "PrivateKey",
            "private key",
            "signing_key",
            "access-key",
            "key_pem",
        ] {
            assert!(is_secret_name(secret), "{secret} should be refused");
        }
        for fine in [
            "token_url",
            "auth_url",
            "revoke_url",
            "client_id",
            "scopes",
            "client_auth",
            "refresh_skew",
            "jwt_subject",
            "jwt_audience",
            "jwt_key_id",
            "key_id",
            "page_size",
            "app_id",
            "webhook_target_url",
            "monkey",
            "keyword",
            "generated",
            "streams",
        ] {
            assert!(!is_secret_name(fine), "{fine} is not a secret");
        }
    }

    #[test]
    fn admin_listens_apart_and_limits_have_defaults() {
        let c = ServerConfig::parse("").unwrap();
        assert_eq!(c.admin_listen, DEFAULT_ADMIN_LISTEN);
        assert_ne!(c.admin_listen, c.listen);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_concurrent_requests, 512);
        // The admin API never shares the webhook listener.
        for text in [
            "listen = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n",
            "listen = \"0.0.0.0:8080\"\nadmin_listen = \"127.0.0.1:8080\"\n",
            "listen = \"0.0.0.0:9465\"\n",
        ] {
            let e = ServerConfig::parse(text).unwrap_err();
            assert!(e.to_string().contains("admin_listen"), "{text}: {e}");
        }
        let c = ServerConfig::parse(
            "[limits]\nheader_read_timeout = \"1m 30s\"\nrequest_timeout = \"500ms\"\n\
             max_connections = 10\nmax_header_bytes = 4096\n",
        )
        .unwrap();
        let l = c.limits.http_limits();
        assert_eq!(l.header_read_timeout, Duration::from_secs(90));
        assert_eq!(l.request_timeout, Duration::from_millis(500));
        assert_eq!((l.max_connections, l.max_header_bytes), (10, 4096));
        for bad in [
            "[limits]\nrequest_timeout = \"soon\"\n",
            "[limits]\nheader_read_timeout = \"0s\"\n",
            "[limits]\nmax_concurrent_requests = 0\n",
            "[limits]\nmax_header_bytes = 10\n",
            "[limits]\nmax_body = 10\n",
        ] {
            assert!(ServerConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_section() {
        // Off by default.
        assert!(ServerConfig::parse("").unwrap().identity.is_none());
        // On a SQLite store the graph defaults to the state database.
        let c = ServerConfig::parse("database = \"state.db\"\n[identity]\n").unwrap();
        let id = c.identity.unwrap();
        assert_eq!(id.path, None);
        assert_eq!(id.policy, apex_connect_identity::Policy::default());
        assert!(
            ServerConfig::parse("[identity]\n")
                .unwrap()
                .store_is_sqlite()
        );
        // The policy, as apex_connect_identity::Policy reads it.
        let c = ServerConfig::parse(
            r#"
store = "sqlite://state.db"
[identity]
path = "graph.db"
[identity.policy]
default_region = "US"
regions = { acme-uk = "GB" }
source_priority = ["salesforce", "hubspot/acme-eu", "hubspot"]
field_priority = { "attributes.title" = ["hubspot"] }
generic_domains = ["example-isp.net"]
phone_guard = false
[[identity.policy.external_ids]]
platform = "salesforce"
object_type = "contact"
field = "custom_fields.HubSpot_Contact_ID__c"
target_platform = "hubspot"
target_object_type = "contact"
"#,
        )
        .unwrap();
        let id = c.identity.unwrap();
        assert_eq!(id.path.as_deref(), Some(Path::new("graph.db")));
        let p = &id.policy;
        assert_eq!(p.region_for("acme-uk").unwrap().code(), "GB");
        assert_eq!(p.region_for("other").unwrap().code(), "US");
        assert_eq!(p.source_priority.len(), 3);
        assert_eq!(p.rank("attributes.title", "hubspot", "x"), 0);
        assert_eq!(p.external_ids.len(), 1);
        assert!(!p.phone_guard);
        // A PostgreSQL store keeps the graph in its database (every node shares it); a
        // memory store needs `identity.path`; with it, fine.
        assert!(ServerConfig::parse("store = \"postgres://apex@db/apex\"\n[identity]\n").is_ok());
        {
            let store = "memory:";
            let e = ServerConfig::parse(&format!("store = \"{store}\"\n[identity]\n")).unwrap_err();
            assert_eq!(e.kind(), apex_connect_core::ErrorKind::Config);
            assert!(e.to_string().contains("identity.path"), "{e}");
            assert!(
                ServerConfig::parse(&format!(
                    "store = \"{store}\"\n[identity]\npath = \"graph.db\"\n"
                ))
                .is_ok()
            );
        }
        // Unknown keys are refused, in the section and in the policy.
        for bad in [
            "[identity]\npaht = \"graph.db\"\n",
            "[identity.policy]\ndefault_regoin = \"US\"\n",
            "[identity.policy]\ndefault_region = \"Atlantis\"\n",
        ] {
            assert!(ServerConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn schedules_need_exactly_one_kind() {
        let base = "[[connection]]\nid = \"a\"\nplatform = \"memory\"\n[[connection.schedule]]\n";
        assert!(
            ServerConfig::parse(&format!("{base}every = \"1m\"\ncron = \"* * * * *\"\n")).is_err()
        );
        assert!(ServerConfig::parse(&format!("{base}full = true\n")).is_err());
        assert!(ServerConfig::parse(&format!("{base}cron = \"not cron\"\n")).is_err());
        assert!(ServerConfig::parse(&format!("{base}cron = \"0 * * * *\"\n")).is_ok());
    }
}
