//! Opening the state store (and the sink into the same database) from a location string.

use std::sync::Arc;

use super::{EncryptionKey, MemoryStore, StateStore};
use crate::error::{Error, Result};
use crate::sink::Sink;

/// Whether `location` names a PostgreSQL database (`postgres://` or `postgresql://`, any case).
pub fn is_postgres_url(location: &str) -> bool {
    let head = location.get(..13).unwrap_or(location).to_ascii_lowercase();
    head.starts_with("postgres://") || head.starts_with("postgresql://")
}

/// The concrete store behind an [`OpenedStore`], for what only one backend offers
/// (PostgreSQL's [`super::PgStore::subscribe_inbox`], pools for admin queries).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Backend {
    /// In memory (`memory:`): nothing survives the process.
    Memory(Arc<MemoryStore>),
    /// A SQLite file (a path, or a `sqlite:` URL).
    #[cfg(feature = "sqlite")]
    Sqlite(super::SqliteStore),
    /// A PostgreSQL database (a `postgres://` URL).
    #[cfg(feature = "postgres")]
    Postgres(super::PgStore),
}

/// A state store and a sink writing into the same database, as [`open_url`] returns them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenedStore {
    /// The state store.
    pub state: Arc<dyn StateStore>,
    /// The records sink of the same database (it wants entities): `SqliteSink`, `PgSink`, or
    /// a `MemorySink` for `memory:`.
    pub sink: Arc<dyn Sink>,
    /// The concrete store.
    pub backend: Backend,
}

/// Opens the store named by `location` and runs its migrations:
///
/// - `postgres://user@host:port/database[?sslmode=...]` (or `postgresql://`): a
///   [`super::PgStore`] with a [`crate::sinks::PgSink`] (feature `postgres`). The password
///   comes from `PGPASSWORD` or `~/.pgpass`, never from the URL.
/// - `sqlite:...` URL (`sqlite://state.db?mode=rwc`, `sqlite::memory:`), or any other text as
///   a file path (created if missing): a `SqliteStore` with a `SqliteSink` (feature `sqlite`).
/// - `memory:`: a [`MemoryStore`] with an entity-keeping `MemorySink`.
///
/// Token sets are encrypted with `key` (the memory store keeps them in memory as they are).
///
/// # Errors
/// `Config` for an empty location, a backend this build lacks (the message names the
/// feature), or what the backend's `connect`/`open` refuses; `Storage` when the database
/// cannot be reached or migrated.
pub async fn open_url(location: &str, key: EncryptionKey) -> Result<OpenedStore> {
    let location = location.trim();
    if location.is_empty() {
        return Err(Error::config("the store location is empty"));
    }
    if is_postgres_url(location) {
        return open_postgres(location, key).await;
    }
    if location == "memory:" {
        let store = Arc::new(MemoryStore::new());
        return Ok(OpenedStore {
            state: store.clone(),
            sink: Arc::new(crate::sinks::MemorySink::with_entities()),
            backend: Backend::Memory(store),
        });
    }
    open_sqlite(location, key).await
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, key: EncryptionKey) -> Result<OpenedStore> {
    let store = super::PgStore::connect(url, key).await?;
    Ok(OpenedStore {
        state: Arc::new(store.clone()),
        sink: Arc::new(crate::sinks::PgSink::for_store(&store)),
        backend: Backend::Postgres(store),
    })
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_url: &str, _key: EncryptionKey) -> Result<OpenedStore> {
    Err(Error::config(
        "this build has no PostgreSQL backend: enable the `postgres` feature",
    ))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(location: &str, key: EncryptionKey) -> Result<OpenedStore> {
    let store = if location.starts_with("sqlite:") {
        super::SqliteStore::connect(location, key).await?
    } else {
        super::SqliteStore::open(location, key).await?
    };
    Ok(OpenedStore {
        state: Arc::new(store.clone()),
        sink: Arc::new(crate::sinks::SqliteSink::for_store(&store)),
        backend: Backend::Sqlite(store),
    })
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_location: &str, _key: EncryptionKey) -> Result<OpenedStore> {
    Err(Error::config(
        "this build has no SQLite backend: enable the `sqlite` feature (or use postgres:// or memory:)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn memory_and_empty() {
        let opened = open_url("memory:", EncryptionKey::generate())
            .await
            .unwrap();
        assert!(matches!(opened.backend, Backend::Memory(_)));
        assert!(opened.sink.wants_entities());
        let e = open_url("  ", EncryptionKey::generate()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_path_and_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let opened = open_url(path.to_str().unwrap(), EncryptionKey::generate())
            .await
            .unwrap();
        assert!(matches!(opened.backend, Backend::Sqlite(_)));
        assert!(opened.sink.wants_entities());
        assert!(path.exists());
        let opened = open_url("sqlite::memory:", EncryptionKey::generate())
            .await
            .unwrap();
        assert!(matches!(opened.backend, Backend::Sqlite(_)));
    }

    #[tokio::test]
    async fn postgres_url_with_a_password_is_refused_before_connecting() {
        let e = open_url(
            "postgres://apex:pw-in-url@127.0.0.1:1/apex",
            EncryptionKey::generate(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(!format!("{e:?}").contains("pw-in-url"));
    }
}
