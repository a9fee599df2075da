//! How to reach the database: [`PgStoreOptions`], with the password kept out of the URL.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgConnectOptions;

use crate::error::{Error, Result};
use crate::store::open::is_postgres_url;

/// The environment variable the password is read from when none is set with
/// [`PgStoreOptions::password`]: libpq's `PGPASSWORD` (a `~/.pgpass` file works too, as with
/// `psql`).
pub const PASSWORD_ENV: &str = "PGPASSWORD";

/// Connections per process by default. Each `serve` process of a multi-node deployment holds
/// up to this many (plus one for inbox notifications): keep the sum under the server's
/// `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Where and how a [`super::PgStore`] connects.
///
/// Built from a `postgres://user@host:port/database?sslmode=...` URL that must **not** carry
/// the password: it comes from [`PASSWORD_ENV`] (`PGPASSWORD`), a `~/.pgpass` file, or
/// [`PgStoreOptions::password`]. So the URL can sit in a configuration file and in logs, and
/// `Debug` shows it without any secret.
#[derive(Clone)]
pub struct PgStoreOptions {
    pub(crate) connect: PgConnectOptions,
    pub(crate) target: String,
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
}

impl fmt::Debug for PgStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not PgConnectOptions' Debug: it prints the password.
        f.debug_struct("PgStoreOptions")
            .field("target", &self.target)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish_non_exhaustive()
    }
}

impl PgStoreOptions {
    /// Options from a `postgres://` (or `postgresql://`) URL without a password.
    ///
    /// # Errors
    /// `Config` when the URL is malformed, is not a PostgreSQL URL, or carries a password
    /// (in the user info or as a `password=` parameter); the message never echoes it.
    pub fn from_url(url: &str) -> Result<Self> {
        if !is_postgres_url(url) {
            return Err(Error::config(
                "not a PostgreSQL URL (expected postgres://user@host/database)",
            ));
        }
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::config("the PostgreSQL URL is malformed").set_source(e))?;
        let password_param = parsed
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("password"));
        if parsed.password().is_some() || password_param {
            return Err(Error::config(
                "the PostgreSQL URL must not contain the password: set PGPASSWORD \
                 (or use ~/.pgpass) instead",
            ));
        }
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| Error::config("the PostgreSQL URL is malformed").set_source(e))?
            .application_name("apex-connect");
        Ok(PgStoreOptions {
            target: describe(&parsed),
            connect,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Duration::from_secs(10),
        })
    }

    /// Uses `password` instead of the one from the environment.
    pub fn password(mut self, password: &SecretString) -> Self {
        self.connect = self.connect.password(password.expose_secret());
        self
    }

    /// The most connections the pool opens (default [`DEFAULT_MAX_CONNECTIONS`], at least 1).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long an operation waits for a free connection before failing with a temporary
    /// `Storage` error (default 10 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The `application_name` the server shows in `pg_stat_activity` (default `apex-connect`;
    /// a node name helps to tell processes apart).
    pub fn application_name(mut self, name: &str) -> Self {
        self.connect = self.connect.application_name(name);
        self
    }

    /// The database as `postgres://user@host:port/database`: no password, no parameters.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// `postgres://user@host:port/database` from a parsed URL (query and password left out).
fn describe(url: &url::Url) -> String {
    let user = url.username();
    let host = url.host_str().unwrap_or("");
    let mut s = String::from("postgres://");
    if !user.is_empty() {
        s.push_str(user);
        s.push('@');
    }
    s.push_str(host);
    if let Some(port) = url.port() {
        s.push(':');
        s.push_str(&port.to_string());
    }
    s.push_str(url.path());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_a_password_are_refused_without_echoing_it() {
        for url in [
            "postgres://apex:hunter2@db.internal/apex",
            "postgresql://apex:hunter2@db.internal:5433/apex?sslmode=require",
            "postgres://apex@db.internal/apex?password=hunter2",
            "postgres://apex@db.internal/apex?PASSWORD=hunter2",
        ] {
            let e = PgStoreOptions::from_url(url).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{url}");
            assert!(!format!("{e}{e:?}").contains("hunter2"), "{e:?}");
        }
    }

    #[test]
    fn target_and_debug_show_no_secret() {
        let o = PgStoreOptions::from_url(
            "postgres://apex@db.internal:5433/state?sslmode=require&application_name=x",
        )
        .unwrap()
        .password(&SecretString::from("s3cret-pw"));
        assert_eq!(o.target(), "postgres://apex@db.internal:5433/state");
        let dbg = format!("{o:?}");
        assert!(!dbg.contains("s3cret-pw"), "{dbg}");
        assert!(dbg.contains("db.internal"), "{dbg}");
    }

    #[test]
    fn only_postgres_schemes() {
        assert!(is_postgres_url("postgres://h/d"));
        assert!(is_postgres_url("PostgreSQL://h/d"));
        assert!(!is_postgres_url("sqlite://state.db"));
        assert!(!is_postgres_url("postgres"));
        assert!(!is_postgres_url("/var/lib/postgres://x"));
        let e = PgStoreOptions::from_url("mysql://h/d").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        let e = PgStoreOptions::from_url("postgres://[bad").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
    }

    #[test]
    fn pool_size_is_at_least_one() {
        let o = PgStoreOptions::from_url("postgres://h/d")
            .unwrap()
            .max_connections(0);
        assert_eq!(o.max_connections, 1);
    }
}
