//! Opening a state store from a configured location, with the record sinks that write into
//! the same database: the one place that names a storage backend.

use std::fmt;
use std::sync::Arc;

use super::{EncryptionKey, MemoryStore, StateStore};
use crate::error::{Error, Result};
use crate::sink::Sink;
use crate::sinks::MemorySink;

/// Where a store lives, parsed from configuration text (see [`StoreLocation::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreLocation {
    /// In this process only (`memory:`): nothing survives a restart. For tests and one-off
    /// runs such as a Singer tap.
    Memory,
    /// A SQLite database: a `sqlite:` URL (`sqlite://state.db`, `sqlite::memory:`), or a file
    /// path (created when missing).
    Sqlite(String),
    /// A PostgreSQL database: a `postgres://user@host:port/database` (or `postgresql://`) URL
    /// without the password, which comes from `PGPASSWORD` or `~/.pgpass`. Opened as a
    /// `PgStore` when apex-connect-core is built with the `postgres` feature; refused
    /// (`Config`) otherwise.
    Postgres(String),
}

impl StoreLocation {
    /// Parses a location: `memory:` (or `memory://`), a `sqlite:` URL, a `postgres://` or
    /// `postgresql://` URL, or else a file path for SQLite.
    ///
    /// # Errors
    /// `Config` for an empty location or an unknown `scheme://`.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.is_empty() {
            return Err(Error::config("the store location is empty"));
        }
        let lower = t.to_ascii_lowercase();
        if lower == "memory:" || lower == "memory://" {
            return Ok(StoreLocation::Memory);
        }
        if lower.starts_with("sqlite:") {
            return Ok(StoreLocation::Sqlite(t.to_string()));
        }
        if is_postgres_url(t) {
            return Ok(StoreLocation::Postgres(t.to_string()));
        }
        if let Some((scheme, _)) = t.split_once("://") {
            return Err(Error::config(
                "unknown store location scheme (memory:, sqlite:, postgres://)",
            )
            .with_context("scheme", scheme));
        }
        Ok(StoreLocation::Sqlite(t.to_string()))
    }
}

/// Whether `location` names a PostgreSQL database (`postgres://` or `postgresql://`, any case).
pub(crate) fn is_postgres_url(location: &str) -> bool {
    let head = location.get(..13).unwrap_or(location).to_ascii_lowercase();
    head.starts_with("postgres://") || head.starts_with("postgresql://")
}

/// Which record sink of an [`OpenedStore`] to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkKind {
    /// Records with their normalized entities, upserted by (connection, stream, id) with the
    /// highest version winning (the `records` table: `SqliteSink` on SQLite, `PgSink` on
    /// PostgreSQL).
    /// Records that cannot be mapped are quarantined by the engine and the workers.
    Records,
    /// The same table without entities: no mapping runs (`SqliteSink::raw_only`,
    /// `PgSink::raw_only`).
    RawRecords,
    /// The ledger: records with a count of how often each change was applied (the
    /// `sink_ledger` table: `LedgerSink` on SQLite, `PgLedgerSink` on PostgreSQL). In memory: a [`MemorySink`], which counts
    /// applications too ([`MemorySink::apply_count`]).
    Ledger,
}

#[derive(Clone)]
enum Backend {
    Memory,
    #[cfg(feature = "sqlite")]
    Sqlite(super::SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(super::PgStore),
}

/// A state store opened by [`open`], with the record sinks that write into the same database.
/// Cheap to clone.
#[derive(Clone)]
pub struct OpenedStore {
    store: Arc<dyn StateStore>,
    backend: Backend,
    location: StoreLocation,
}

impl fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Opens (creating when needed, migrating) the state store at `location` (see
/// [`StoreLocation::parse`]); tokens are encrypted at rest with `key` in persistent stores.
///
/// The returned [`OpenedStore`] hands out the store as `Arc<dyn StateStore>` and the record
/// sinks of the same database ([`OpenedStore::sink`]), so hosts (the server, the CLI) never
/// name a backend: a new one plugs in here.
///
/// # Errors
/// `Config` for a malformed location, a PostgreSQL URL carrying a password, or a backend this
/// build lacks (PostgreSQL without the `postgres` feature, SQLite without `sqlite`);
/// `Storage` when the database cannot be reached, opened or migrated.
pub async fn open(location: &str, key: EncryptionKey) -> Result<OpenedStore> {
    let location = StoreLocation::parse(location)?;
    match &location {
        StoreLocation::Memory => Ok(OpenedStore {
            store: Arc::new(MemoryStore::new()),
            backend: Backend::Memory,
            location,
        }),
        #[cfg(feature = "postgres")]
        StoreLocation::Postgres(url) => {
            let store = super::PgStore::connect(url, key).await?;
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Postgres(store),
                location,
            })
        }
        #[cfg(not(feature = "postgres"))]
        StoreLocation::Postgres(_) => {
            let _ = key;
            Err(Error::config(
                "PostgreSQL state stores need the `postgres` feature of apex-connect-core \
                 (the `postgres` feature of apex-connect-server / apex-connect)",
            ))
        }
        #[cfg(feature = "sqlite")]
        StoreLocation::Sqlite(target) => {
            let store = open_sqlite(target, key).await?;
            Ok(OpenedStore {
                store: Arc::new(store.clone()),
                backend: Backend::Sqlite(store),
                location,
            })
        }
        #[cfg(not(feature = "sqlite"))]
        StoreLocation::Sqlite(_) => {
            let _ = key;
            Err(Error::config(
                "SQLite state stores need the `sqlite` feature of apex-connect-core",
            ))
        }
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(target: &str, key: EncryptionKey) -> Result<super::SqliteStore> {
    use std::str::FromStr;

    use sqlx::sqlite::SqliteConnectOptions;

    if !target.to_ascii_lowercase().starts_with("sqlite:") {
        return super::SqliteStore::open(target, key).await;
    }
    let mut options = SqliteConnectOptions::from_str(target)
        .map_err(|e| Error::config("not a valid sqlite: URL").set_source(e))?;
    // A URL that does not say `mode=` creates its file, as a plain path does.
    if !target.contains("mode=") {
        options = options.create_if_missing(true);
    }
    let in_memory = target.contains(":memory:") || target.contains("mode=memory");
    super::SqliteStore::with_options(options, in_memory, key).await
}

impl OpenedStore {
    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Where it lives.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Whether it keeps nothing across restarts (`memory:`).
    pub fn is_ephemeral(&self) -> bool {
        matches!(self.backend, Backend::Memory)
    }

    /// A record sink writing into the same database (see [`SinkKind`]).
    pub fn sink(&self, kind: SinkKind) -> Arc<dyn Sink> {
        match (&self.backend, kind) {
            (Backend::Memory, SinkKind::Records) => Arc::new(MemorySink::with_entities()),
            (Backend::Memory, SinkKind::RawRecords | SinkKind::Ledger) => {
                Arc::new(MemorySink::new())
            }
            #[cfg(feature = "sqlite")]
            (Backend::Sqlite(s), SinkKind::Records) => Arc::new(crate::SqliteSink::for_store(s)),
            #[cfg(feature = "sqlite")]
            (Backend::Sqlite(s), SinkKind::RawRecords) => {
                Arc::new(crate::SqliteSink::for_store(s).raw_only())
            }
            #[cfg(feature = "sqlite")]
            (Backend::Sqlite(s), SinkKind::Ledger) => {
                Arc::new(crate::sinks::LedgerSink::for_store(s))
            }
            #[cfg(feature = "postgres")]
            (Backend::Postgres(s), SinkKind::Records) => Arc::new(crate::PgSink::for_store(s)),
            #[cfg(feature = "postgres")]
            (Backend::Postgres(s), SinkKind::RawRecords) => {
                Arc::new(crate::PgSink::for_store(s).raw_only())
            }
            #[cfg(feature = "postgres")]
            (Backend::Postgres(s), SinkKind::Ledger) => {
                Arc::new(crate::sinks::PgLedgerSink::for_store(s))
            }
        }
    }

    /// The SQLite store, when this is one: for hosts that keep more tables in the same
    /// database file (its pool, [`super::SqliteStore::pool`]).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(&self) -> Option<&super::SqliteStore> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            _ => None,
        }
    }

    /// The PostgreSQL store, when this is one: for what only PostgreSQL offers
    /// ([`super::PgStore::subscribe_inbox`], the pool for a host's own queries).
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Option<&super::PgStore> {
        match &self.backend {
            Backend::Postgres(s) => Some(s),
            _ => None,
        }
    }

    /// Closes the database, waiting for its connections to finish (SQLite checkpoints its
    /// write-ahead log; PostgreSQL's pool ends its connections). Call it before the process
    /// exits.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Memory => {}
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(s) => s.close().await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(s) => s.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            StoreLocation::parse("memory:").unwrap(),
            StoreLocation::Memory
        );
        assert_eq!(
            StoreLocation::parse("state.db").unwrap(),
            StoreLocation::Sqlite("state.db".into())
        );
        assert_eq!(
            StoreLocation::parse("sqlite://state.db").unwrap(),
            StoreLocation::Sqlite("sqlite://state.db".into())
        );
        assert!(matches!(
            StoreLocation::parse("postgres://db/apex").unwrap(),
            StoreLocation::Postgres(_)
        ));
        assert!(matches!(
            StoreLocation::parse("PostgreSQL://db/apex").unwrap(),
            StoreLocation::Postgres(_)
        ));
        assert!(StoreLocation::parse("mysql://db").is_err());
        assert!(StoreLocation::parse("  ").is_err());
    }

    #[tokio::test]
    async fn postgres_url_with_a_password_is_refused_before_connecting() {
        let e = open(
            "postgres://apex:pw-in-url@127.0.0.1:1/apex",
            EncryptionKey::generate(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(!format!("{e:?}").contains("pw-in-url"));
    }
}
