//! Token sets and the `TokenStore` that persists them with compare-and-swap.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::model::ConnectionId;
use crate::webhook::unix_ms;

/// The credentials of one connection: an access token and what is needed to renew it.
///
/// Every secret is a [`SecretString`]; `Debug` prints `[redacted]` for them, and there is no
/// `Display`. Serialization (for encrypted storage only) exposes the secrets on purpose.
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenSet {
    /// The bearer token sent to the API.
    #[serde(with = "crate::serde_secret::string")]
    pub access_token: SecretString,
    /// The refresh token, when the grant has one.
    #[serde(with = "crate::serde_secret::option", default)]
    pub refresh_token: Option<SecretString>,
    /// When the access token expires, Unix milliseconds. `None`: unknown (Salesforce), so it
    /// is refreshed when the API answers 401.
    pub expires_at_ms: Option<i64>,
    /// When the access token was issued, Unix milliseconds (the server's `issued_at` when it
    /// sent one that is not in the future, else when the answer arrived). With
    /// `expires_at_ms` it gives the token's lifetime, which caps how early the
    /// [`crate::oauth::TokenManager`] refreshes. `None`: unknown (tokens stored before this
    /// field existed); the refresh margin is then not capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at_ms: Option<i64>,
    /// The token type, usually `"Bearer"`.
    pub token_type: String,
    /// Granted scopes, when the server said.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The API host this token is for, when the token endpoint names one (Salesforce's
    /// `instance_url`). Connectors add it to the connection's API hosts.
    #[serde(default)]
    pub instance_url: Option<String>,
    /// The identity the token endpoint vouched for (Salesforce's `id`, `issued_at` and
    /// `signature`), verbatim, for the connector to verify. `None` when the answer had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::token_identity::TokenIdentity>,
    /// A refresh in progress: written (compare-and-swap) by the token manager that is about
    /// to spend the refresh token, so other processes sharing the store wait for its result
    /// instead of spending the same (rotating) refresh token. `None` normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_lease: Option<RefreshLease>,
}

/// The longest access-token lifetime taken from a token answer (10 years): larger
/// `expires_in` / `expires_at` values are clamped to it, so no arithmetic on them can overflow.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `d` in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A claim on the next refresh of a stored token set (see [`TokenSet::refresh_lease`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshLease {
    /// Who holds it: the random id of one token manager instance.
    pub holder: String,
    /// Until when, Unix milliseconds; after that another manager may take over.
    pub until_ms: i64,
}

impl RefreshLease {
    /// A lease held by `holder` until `until_ms`.
    pub fn new(holder: impl Into<String>, until_ms: i64) -> Self {
        RefreshLease {
            holder: holder.into(),
            until_ms,
        }
    }
}

impl TokenSet {
    /// A bearer token with nothing else.
    pub fn bearer(access_token: impl Into<String>) -> Self {
        TokenSet {
            access_token: SecretString::from(access_token.into()),
            refresh_token: None,
            expires_at_ms: None,
            issued_at_ms: None,
            token_type: "Bearer".into(),
            scopes: Vec::new(),
            instance_url: None,
            identity: None,
            refresh_lease: None,
        }
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, token: impl Into<String>) -> Self {
        self.refresh_token = Some(SecretString::from(token.into()));
        self
    }

    /// Sets the expiry.
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at_ms = Some(unix_ms(at));
        self
    }

    /// Sets the expiry from an `expires_in` relative to `now`, and the issue time to `now`.
    /// The lifetime is capped at [`MAX_TOKEN_LIFETIME`] (no overflow, whatever the input).
    pub fn with_expires_in(mut self, expires_in: Duration, now: SystemTime) -> Self {
        let now_ms = unix_ms(now);
        self.expires_at_ms =
            Some(now_ms.saturating_add(duration_ms(expires_in.min(MAX_TOKEN_LIFETIME))));
        self.issued_at_ms = Some(now_ms);
        self
    }

    /// Sets when the access token was issued.
    pub fn with_issued_at(mut self, at: SystemTime) -> Self {
        self.issued_at_ms = Some(unix_ms(at));
        self
    }

    /// The access token's lifetime (expiry minus issue time), when both are known.
    pub fn lifetime(&self) -> Option<Duration> {
        let (issued, expires) = (self.issued_at_ms?, self.expires_at_ms?);
        let ms = expires.saturating_sub(issued).max(0);
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    /// Sets the instance URL.
    pub fn with_instance_url(mut self, url: impl Into<String>) -> Self {
        self.instance_url = Some(url.into());
        self
    }

    /// Whether the access token expires within `skew` of `now` (never, when the expiry is unknown).
    pub fn expires_within(&self, skew: Duration, now: SystemTime) -> bool {
        match self.expires_at_ms {
            Some(at) => at <= unix_ms(now).saturating_add(duration_ms(skew)),
            None => false,
        }
    }

    /// Whether two token sets carry the same access token (compared without logging either).
    pub fn same_access_token(&self, other: &TokenSet) -> bool {
        self.access_token.expose_secret() == other.access_token.expose_secret()
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at_ms", &self.expires_at_ms)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("token_type", &self.token_type)
            .field("scopes", &self.scopes)
            .field("instance_url", &self.instance_url)
            .field("identity", &self.identity)
            .field("refresh_lease", &self.refresh_lease)
            .finish()
    }
}

/// A stored value with the version it was stored under (for compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Its version: starts at 1 and grows by one with each successful save.
    pub version: u64,
}

/// Persists token sets per connection. Host-implementable; held as `Arc<dyn TokenStore>`.
///
/// # Behavior
/// - `load` of a connection never saved is `Ok(None)`.
/// - `save(key, tokens, expected)` succeeds only if the stored version equals `expected`
///   (`None`: nothing stored yet), and returns the new version, which is greater than any
///   version the connection had before (stores may keep counting across a `delete`, so that
///   a process holding a version from before the delete can never win).
/// - A `save` that loses the race fails with `ErrorKind::Conflict` and changes nothing, so a
///   process holding an older token set can never overwrite a newer one.
/// - Implementations that persist keep secrets encrypted at rest.
#[async_trait]
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// The stored token set of `connection`.
    ///
    /// # Errors
    /// `Storage` on I/O failure; `Config` when stored tokens cannot be decrypted (wrong key).
    async fn load(&self, connection: &ConnectionId) -> Result<Option<Versioned<TokenSet>>>;

    /// Stores `tokens` if the current version is `expected`.
    ///
    /// # Errors
    /// `Conflict` when the stored version differs; `Storage` on I/O failure.
    async fn save(
        &self,
        connection: &ConnectionId,
        tokens: &TokenSet,
        expected: Option<u64>,
    ) -> Result<u64>;

    /// Removes the tokens of `connection` (disconnect).
    ///
    /// # Errors
    /// `Storage` on I/O failure.
    async fn delete(&self, connection: &ConnectionId) -> Result<()>;
}

/// An in-memory [`TokenStore`], for tests and single-process hosts that re-authorize on start.
#[derive(Default)]
pub struct MemoryTokenStore {
    inner: Mutex<HashMap<ConnectionId, Versioned<TokenSet>>>,
}

impl MemoryTokenStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inner.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "MemoryTokenStore({n} connections)")
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self, connection: &ConnectionId) -> Result<Option<Versioned<TokenSet>>> {
        Ok(self
            .inner
            .lock()
            .expect("poisoned")
            .get(connection)
            .cloned())
    }

    async fn save(
        &self,
        connection: &ConnectionId,
        tokens: &TokenSet,
        expected: Option<u64>,
    ) -> Result<u64> {
        let mut map = self.inner.lock().expect("poisoned");
        let current = map.get(connection).map(|v| v.version);
        if current != expected {
            return Err(conflict(connection, expected, current));
        }
        let version = current.unwrap_or(0) + 1;
        map.insert(
            connection.clone(),
            Versioned {
                value: tokens.clone(),
                version,
            },
        );
        Ok(version)
    }

    async fn delete(&self, connection: &ConnectionId) -> Result<()> {
        self.inner.lock().expect("poisoned").remove(connection);
        Ok(())
    }
}

/// The error a compare-and-swap save returns when it lost the race.
pub fn conflict(connection: &ConnectionId, expected: Option<u64>, actual: Option<u64>) -> Error {
    Error::new(
        ErrorKind::Conflict,
        "stored version changed since it was loaded",
    )
    .with_context("connection", connection)
    .with_context("expected_version", fmt_version(expected))
    .with_context("actual_version", fmt_version(actual))
}

fn fmt_version(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_cas() {
        let s = MemoryTokenStore::new();
        let c = ConnectionId::from("c1");
        assert!(s.load(&c).await.unwrap().is_none());
        let v1 = s.save(&c, &TokenSet::bearer("a"), None).await.unwrap();
        assert_eq!(v1, 1);
        let e = s.save(&c, &TokenSet::bearer("b"), None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert_eq!(
            s.save(&c, &TokenSet::bearer("b"), Some(1)).await.unwrap(),
            2
        );
        let e = s
            .save(&c, &TokenSet::bearer("old"), Some(1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let got = s.load(&c).await.unwrap().unwrap();
        assert_eq!(got.version, 2);
        assert_eq!(got.value.access_token.expose_secret(), "b");
    }

    #[test]
    fn expiry_arithmetic_saturates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let now_ms = 1_700_000_000_000i64;
        let max = now_ms + duration_ms(MAX_TOKEN_LIFETIME);
        for (d, expected) in [
            (Duration::ZERO, now_ms),
            (Duration::from_secs(1), now_ms + 1000),
            (Duration::from_secs(u64::MAX), max),
            (Duration::MAX, max),
            (Duration::from_secs(200_000_000_000_000_000), max),
        ] {
            let t = TokenSet::bearer("a").with_expires_in(d, now);
            assert_eq!(t.expires_at_ms, Some(expected), "{d:?}");
            assert_eq!(t.issued_at_ms, Some(now_ms));
            assert!(t.lifetime().unwrap() <= MAX_TOKEN_LIFETIME);
        }
        let t = TokenSet::bearer("a").with_expires_in(Duration::from_secs(60), now);
        assert!(t.expires_within(Duration::MAX, now));
        assert!(!t.expires_within(Duration::ZERO, now));
        assert!(t.expires_within(Duration::ZERO, now + Duration::from_secs(60)));
        let mut odd = TokenSet::bearer("a");
        odd.issued_at_ms = Some(i64::MAX);
        odd.expires_at_ms = Some(i64::MIN);
        assert_eq!(odd.lifetime(), Some(Duration::ZERO));
        odd.issued_at_ms = Some(i64::MIN);
        odd.expires_at_ms = Some(i64::MAX);
        assert!(odd.lifetime().is_some());
        assert!(!odd.expires_within(Duration::ZERO, now));
        // Far-future and pre-epoch clocks.
        assert_eq!(unix_ms(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
        if let Some(far) =
            SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(i64::MAX as u64 / 1000 * 2))
        {
            assert_eq!(unix_ms(far), i64::MAX);
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let t = TokenSet::bearer("sekrit-access").with_refresh_token("sekrit-refresh");
        let d = format!("{t:?}");
        assert!(!d.contains("sekrit"), "{d}");
    }
}
