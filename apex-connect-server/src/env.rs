//! Where the service reads its secrets: connection secrets and the encryption key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use apex_connect_core::store::{ENCRYPTION_KEY_ENV, EncryptionKey};
use apex_connect_core::{Error, Result, Secrets};

use crate::config::ConnectionConfig;

type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A source of environment variables: the process environment ([`Environment::system`]), or
/// another lookup (tests, hosts with a secret manager). `Debug` shows no value.
#[derive(Clone)]
pub struct Environment(Lookup);

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Environment")
    }
}

impl Default for Environment {
    fn default() -> Self {
        Environment::system()
    }
}

impl Environment {
    /// The process environment.
    pub fn system() -> Self {
        Environment(Arc::new(|name| std::env::var(name).ok()))
    }

    /// Variables from a lookup function.
    pub fn from_fn(lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Environment(Arc::new(lookup))
    }

    /// Variables from a map (tests).
    pub fn from_map<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let map: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Environment(Arc::new(move |name| map.get(name).cloned()))
    }

    /// The variable `name`.
    pub fn var(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }

    /// A connection's secrets: the variables its `env` table names (an unset one is absent).
    pub fn secrets(&self, connection: &ConnectionConfig) -> Secrets {
        Secrets::from_lookup(
            connection.env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            |var| self.var(var),
        )
    }

    /// The key encrypting OAuth tokens at rest, from `APEX_CONNECT_KEY` (base64 of 32 bytes).
    ///
    /// # Errors
    /// `Config` when it is unset or not a key.
    pub fn encryption_key(&self) -> Result<EncryptionKey> {
        let value = self.var(ENCRYPTION_KEY_ENV).ok_or_else(|| {
            Error::config("the encryption key is not set (base64 of 32 bytes)")
                .with_context("variable", ENCRYPTION_KEY_ENV)
        })?;
        EncryptionKey::from_base64(&value)
            .map_err(|e| e.with_context("variable", ENCRYPTION_KEY_ENV))
    }
}
