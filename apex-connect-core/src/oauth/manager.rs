//! `TokenManager`: one per connection; hands out fresh access tokens, refreshing once however
//! many tasks (and processes) ask.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::client::OAuthClient;
use super::jwt::JwtAssertion;
use super::{Clock, system_clock};
use crate::error::{Error, ErrorKind, Result};
use crate::http::Credentials;
use crate::model::ConnectionId;
use crate::token::{RefreshLease, TokenSet, TokenStore, Versioned};
use crate::webhook::unix_ms;

/// Obtains a new token set when the current one expired or was rejected.
///
/// # Behavior
/// - Returns a complete token set to store: implementations keep the old refresh token (and
///   other fields) when the server's answer omits them.
/// - Fails with `Unauthenticated` (permanent) when the grant is gone (`invalid_grant`, no
///   refresh token): the [`TokenManager`] then reports the connection as needing
///   re-authorization and does not retry.
#[async_trait]
pub trait TokenRefresher: Send + Sync + fmt::Debug {
    /// A new token set replacing `current`.
    ///
    /// # Errors
    /// As [`OAuthClient`]'s grants.
    async fn refresh(&self, current: &TokenSet) -> Result<TokenSet>;
}

/// The refresh-token grant.
#[async_trait]
impl TokenRefresher for OAuthClient {
    async fn refresh(&self, current: &TokenSet) -> Result<TokenSet> {
        OAuthClient::refresh(self, current).await
    }
}

/// Renews tokens with the client-credentials grant (no refresh token involved).
#[derive(Debug, Clone)]
pub struct ClientCredentialsRefresher {
    client: OAuthClient,
    scopes: Vec<String>,
}

impl ClientCredentialsRefresher {
    /// Uses `client`'s client-credentials grant with `scopes` (empty: the configured ones).
    pub fn new(client: OAuthClient, scopes: Vec<String>) -> Self {
        ClientCredentialsRefresher { client, scopes }
    }
}

#[async_trait]
impl TokenRefresher for ClientCredentialsRefresher {
    async fn refresh(&self, _current: &TokenSet) -> Result<TokenSet> {
        self.client.client_credentials(&self.scopes).await
    }
}

/// Mints a fresh JWT assertion and exchanges it (RFC 7523) each time a token is needed.
#[derive(Debug, Clone)]
pub struct JwtBearerRefresher {
    client: OAuthClient,
    assertion: JwtAssertion,
}

impl JwtBearerRefresher {
    /// Signs `assertion` anew and sends it through `client` on each refresh.
    pub fn new(client: OAuthClient, assertion: JwtAssertion) -> Self {
        JwtBearerRefresher { client, assertion }
    }
}

#[async_trait]
impl TokenRefresher for JwtBearerRefresher {
    async fn refresh(&self, _current: &TokenSet) -> Result<TokenSet> {
        let jwt = self.assertion.sign()?;
        self.client.jwt_bearer(&jwt).await
    }
}

/// Called when a connection needs re-authorization (so the host can mark it `NeedsReauth`).
pub type ReauthHook = Arc<dyn Fn(&ConnectionId) + Send + Sync>;

/// Default refresh-ahead margin.
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);
/// Default time another process may hold a refresh claim before this one takes over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Default interval at which a waiting manager re-reads the store.
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);

/// Builds a [`TokenManager`].
pub struct TokenManagerBuilder {
    connection: ConnectionId,
    store: Arc<dyn TokenStore>,
    refresher: Arc<dyn TokenRefresher>,
    skew: Duration,
    lease: Duration,
    poll: Duration,
    clock: Clock,
    on_reauth_needed: Option<ReauthHook>,
    obtain_when_missing: bool,
}

impl fmt::Debug for TokenManagerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenManagerBuilder")
            .field("connection", &self.connection)
            .field("skew", &self.skew)
            .finish_non_exhaustive()
    }
}

impl TokenManagerBuilder {
    /// Refresh this long before expiry (default 60 s). Keep it well below the token lifetime.
    pub fn skew(mut self, skew: Duration) -> Self {
        self.skew = skew;
        self
    }

    /// How long another process may hold a refresh claim before this one takes over
    /// (default 15 s; must exceed the token endpoint's worst answer time).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often a manager waiting for another process's refresh re-reads the store
    /// (default 100 ms).
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Replaces the clock used for expiry decisions (tests).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Called once each time the grant turns out to be gone (`invalid_grant`).
    pub fn on_reauth_needed(
        mut self,
        hook: impl Fn(&ConnectionId) + Send + Sync + 'static,
    ) -> Self {
        self.on_reauth_needed = Some(Arc::new(hook));
        self
    }

    /// When no token set is stored, obtain one by running the grant (client credentials, JWT
    /// bearer) instead of failing with "connect it first" (default `false`: the refresh-token
    /// grant needs a user's authorization first).
    pub fn obtain_when_missing(mut self, on: bool) -> Self {
        self.obtain_when_missing = on;
        self
    }

    /// The manager.
    pub fn build(self) -> TokenManager {
        TokenManager {
            connection: self.connection,
            store: self.store,
            refresher: self.refresher,
            skew: self.skew,
            lease: self.lease,
            poll: self.poll,
            clock: self.clock,
            on_reauth_needed: self.on_reauth_needed,
            obtain_when_missing: self.obtain_when_missing,
            holder: format!("{:016x}", rand::random::<u64>()),
            cache: RwLock::new(None),
            flight: tokio::sync::Mutex::new(Flight::default()),
        }
    }
}

#[derive(Default)]
struct Flight {
    /// The store version whose grant is known to be gone (`invalid_grant`).
    dead: Option<u64>,
}

/// What triggered a refresh.
#[derive(Clone, Copy)]
enum Need<'a> {
    /// A token that does not expire within the skew.
    Fresh,
    /// A token other than the one the API rejected with 401.
    Not(&'a HeaderValue),
}

/// Hands out the access token of one connection, refreshing it ahead of expiry.
///
/// Share it as `Arc<TokenManager>`; it implements [`Credentials`] for the HTTP stack.
///
/// # Behavior
/// - The token set is loaded from the [`TokenStore`] on first use and cached.
/// - A cached token that does not expire within the skew is returned without I/O.
/// - Otherwise one task refreshes (an async mutex plus a re-check under it), the others wait
///   and reuse its result: one token request however many tasks ask.
/// - Across processes sharing a store, the refresh is first claimed by a compare-and-swap save
///   of the current set with a [`RefreshLease`] (holder, until). A process that finds another's
///   live lease waits for that process's token (re-reading the store every poll interval)
///   instead of spending the same refresh token, so a rotated refresh token is never sent
///   twice. An expired lease (its holder died or hung) is taken over; a holder whose refresh
///   failed temporarily releases it.
/// - The new token set is saved (compare-and-swap on the claimed version) before the new access
///   token is handed out. If the save loses, the stored set is reloaded and used when valid.
/// - `invalid_grant` (or no refresh token): the hook is called once, the error is
///   `Unauthenticated`, and no further request is made for that stored token set. Saving new
///   tokens for the connection (after re-authorization; see [`TokenManager::replace`]) revives it.
/// - A token without expiry (Salesforce) is refreshed only after a 401
///   ([`Credentials::refresh_after_unauthorized`]).
/// - If a refresh ahead of expiry fails temporarily, the still-valid token is returned.
pub struct TokenManager {
    connection: ConnectionId,
    store: Arc<dyn TokenStore>,
    refresher: Arc<dyn TokenRefresher>,
    skew: Duration,
    lease: Duration,
    poll: Duration,
    clock: Clock,
    on_reauth_needed: Option<ReauthHook>,
    obtain_when_missing: bool,
    holder: String,
    cache: RwLock<Option<Versioned<TokenSet>>>,
    flight: tokio::sync::Mutex<Flight>,
}

impl fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self.read_cache();
        f.debug_struct("TokenManager")
            .field("connection", &self.connection)
            .field("store", &self.store)
            .field("refresher", &self.refresher)
            .field("skew", &self.skew)
            .field("cached_version", &cached.as_ref().map(|c| c.version))
            .field(
                "cached_expires_at_ms",
                &cached.as_ref().and_then(|c| c.value.expires_at_ms),
            )
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A builder for the manager of `connection`.
    pub fn builder(
        connection: ConnectionId,
        store: Arc<dyn TokenStore>,
        refresher: Arc<dyn TokenRefresher>,
    ) -> TokenManagerBuilder {
        TokenManagerBuilder {
            connection,
            store,
            refresher,
            skew: DEFAULT_SKEW,
            lease: DEFAULT_LEASE,
            poll: DEFAULT_POLL,
            clock: system_clock(),
            on_reauth_needed: None,
            obtain_when_missing: false,
        }
    }

    /// The connection this manager serves.
    pub fn connection(&self) -> &ConnectionId {
        &self.connection
    }

    /// A token set fresh enough to use now.
    ///
    /// # Errors
    /// `Unauthenticated` when nothing is stored or the grant is gone; the refresher's errors
    /// (`Network`, `Upstream`, `RateLimited`, temporary) when a needed refresh failed;
    /// `Storage` from the store.
    pub async fn token(&self) -> Result<TokenSet> {
        if let Some(t) = self.cached_if(Need::Fresh) {
            return Ok(t);
        }
        let mut flight = self.flight.lock().await;
        self.obtain(&mut flight, Need::Fresh).await
    }

    /// The access token to send now (see [`TokenManager::token`]).
    ///
    /// # Errors
    /// As [`TokenManager::token`].
    pub async fn access_token(&self) -> Result<SecretString> {
        Ok(self.token().await?.access_token)
    }

    /// Stores a new token set for the connection (after a code exchange or a re-authorization),
    /// replacing whatever is stored, and uses it from now on.
    ///
    /// # Errors
    /// `Storage` from the store; `Conflict` if the store keeps changing under us.
    pub async fn replace(&self, tokens: TokenSet) -> Result<()> {
        let mut flight = self.flight.lock().await;
        for _ in 0..5 {
            let current = self.store.load(&self.connection).await?.map(|v| v.version);
            match self.store.save(&self.connection, &tokens, current).await {
                Ok(version) => {
                    flight.dead = None;
                    self.write_cache(Some(Versioned {
                        value: tokens,
                        version,
                    }));
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Conflict => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            "token store kept changing while replacing tokens",
        )
        .with_context("connection", &self.connection))
    }

    fn read_cache(&self) -> Option<Versioned<TokenSet>> {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn write_cache(&self, v: Option<Versioned<TokenSet>>) {
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = v;
    }

    fn satisfies(&self, t: &TokenSet, need: Need<'_>) -> bool {
        match need {
            Need::Fresh => !t.expires_within(self.skew, (self.clock)()),
            Need::Not(rejected) => {
                let header = bearer_header_string(t);
                !bool::from(header.as_bytes().ct_eq(rejected.as_bytes()))
            }
        }
    }

    fn cached_if(&self, need: Need<'_>) -> Option<TokenSet> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache
            .as_ref()
            .filter(|c| self.satisfies(&c.value, need))
            .map(|c| c.value.clone())
    }

    fn gone(&self, message: &'static str) -> Error {
        Error::new(ErrorKind::Unauthenticated, message)
            .permanent()
            .with_context("connection", &self.connection)
            .with_context("action", "needs re-authorization")
    }

    /// The slow path, under the single-flight lock.
    async fn obtain(&self, flight: &mut Flight, need: Need<'_>) -> Result<TokenSet> {
        // Another task may have refreshed while we waited for the lock.
        if let Some(t) = self.cached_if(need) {
            return Ok(t);
        }
        // Waiting for another process never takes much longer than one lease.
        let deadline = tokio::time::Instant::now() + self.lease * 2 + self.poll;
        let mut attempts = 0;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "timed out settling the token refresh with other processes",
                )
                .temporary()
                .with_context("connection", &self.connection));
            }
            // The store is the source of truth: another process may have refreshed.
            let mut current = self.load().await?;
            if flight.dead == Some(current.version) {
                return Err(self.gone("the grant of this connection is gone"));
            }
            flight.dead = None;
            if self.satisfies(&current.value, need) {
                return Ok(current.value);
            }
            let now_ms = unix_ms((self.clock)());
            match &current.value.refresh_lease {
                Some(l) if l.holder != self.holder && l.until_ms > now_ms => {
                    // Another process is refreshing: wait for its token to land.
                    tokio::time::sleep(self.poll).await;
                    continue;
                }
                Some(l) if l.holder == self.holder => {}
                _ => {
                    // Claim the refresh (compare-and-swap), so nobody else spends this
                    // refresh token meanwhile.
                    let mut claimed = current.value.clone();
                    claimed.refresh_lease = Some(RefreshLease::new(
                        self.holder.clone(),
                        now_ms.saturating_add(self.lease.as_millis() as i64),
                    ));
                    match self
                        .store
                        .save(&self.connection, &claimed, Some(current.version))
                        .await
                    {
                        Ok(v) => {
                            current = Versioned {
                                value: claimed,
                                version: v,
                            };
                            self.write_cache(Some(current.clone()));
                        }
                        Err(e) if e.kind() == ErrorKind::Conflict => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
            attempts += 1;
            if attempts > 4 {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "could not settle the token refresh with other processes",
                )
                .temporary()
                .with_context("connection", &self.connection));
            }
            tracing::debug!(connection = %self.connection, "refreshing access token");
            match self.refresher.refresh(&current.value).await {
                Ok(mut new) => {
                    new.refresh_lease = None;
                    match self
                        .store
                        .save(&self.connection, &new, Some(current.version))
                        .await
                    {
                        Ok(v) => {
                            self.write_cache(Some(Versioned {
                                value: new.clone(),
                                version: v,
                            }));
                            return Ok(new);
                        }
                        Err(e) if e.kind() == ErrorKind::Conflict => {
                            // Our lease was taken over (it outlived the lease time): the
                            // stored set wins; reload and use it, or refresh again.
                            tracing::warn!(connection = %self.connection,
                                "refreshed token lost the store race; using the stored one");
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) if e.kind() == ErrorKind::Unauthenticated => {
                    flight.dead = Some(current.version);
                    self.write_cache(None);
                    tracing::warn!(connection = %self.connection,
                        "token refresh says the grant is gone; connection needs re-authorization");
                    if let Some(hook) = &self.on_reauth_needed {
                        hook(&self.connection);
                    }
                    return Err(e.with_context("connection", &self.connection));
                }
                Err(e) => {
                    // Release the lease so that another process may try at once.
                    let mut released = current.value.clone();
                    released.refresh_lease = None;
                    if let Ok(v) = self
                        .store
                        .save(&self.connection, &released, Some(current.version))
                        .await
                    {
                        current = Versioned {
                            value: released,
                            version: v,
                        };
                        self.write_cache(Some(current.clone()));
                    }
                    // Refreshing ahead of time: the current token still works for a while.
                    if let (Need::Fresh, Some(at)) = (need, current.value.expires_at_ms)
                        && at > unix_ms((self.clock)())
                    {
                        tracing::warn!(connection = %self.connection, error = %e,
                            "token refresh failed; using the current token until it expires");
                        return Ok(current.value);
                    }
                    return Err(e.with_context("connection", &self.connection));
                }
            }
        }
    }

    async fn load(&self) -> Result<Versioned<TokenSet>> {
        match self.store.load(&self.connection).await? {
            Some(v) => {
                self.write_cache(Some(v.clone()));
                Ok(v)
            }
            None if self.obtain_when_missing => {
                // Client credentials / JWT bearer: no user grant to wait for.
                tracing::debug!(connection = %self.connection, "obtaining a first access token");
                let new = self.refresher.refresh(&TokenSet::bearer("")).await?;
                match self.store.save(&self.connection, &new, None).await {
                    Ok(version) => {
                        let v = Versioned {
                            value: new,
                            version,
                        };
                        self.write_cache(Some(v.clone()));
                        Ok(v)
                    }
                    // Another process stored one first: use it.
                    Err(e) if e.kind() == ErrorKind::Conflict => {
                        match self.store.load(&self.connection).await? {
                            Some(v) => {
                                self.write_cache(Some(v.clone()));
                                Ok(v)
                            }
                            None => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            None => {
                self.write_cache(None);
                Err(self.gone("no tokens stored for this connection; connect it first"))
            }
        }
    }
}

fn bearer_header_string(t: &TokenSet) -> String {
    format!("Bearer {}", t.access_token.expose_secret())
}

fn bearer_header(t: &TokenSet) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&bearer_header_string(t)).map_err(|_| {
        Error::invalid_response("the access token contains characters not allowed in a header")
    })?;
    v.set_sensitive(true);
    Ok(v)
}

#[async_trait]
impl Credentials for TokenManager {
    async fn authorization(&self) -> Result<HeaderValue> {
        bearer_header(&self.token().await?)
    }

    async fn refresh_after_unauthorized(&self, rejected: &HeaderValue) -> Result<bool> {
        if self.cached_if(Need::Not(rejected)).is_some() {
            return Ok(true);
        }
        let mut flight = self.flight.lock().await;
        self.obtain(&mut flight, Need::Not(rejected)).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::MemoryTokenStore;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl TokenRefresher for Counting {
        async fn refresh(&self, current: &TokenSet) -> Result<TokenSet> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut t = TokenSet::bearer(format!("access-{n}"))
                .with_expires_in(Duration::from_secs(3600), SystemTime::now());
            t.refresh_token = current.refresh_token.clone();
            Ok(t)
        }
    }

    #[tokio::test]
    async fn single_flight_in_process() {
        let store = Arc::new(MemoryTokenStore::new());
        let c = ConnectionId::from("c");
        let expired = TokenSet::bearer("access-0")
            .with_refresh_token("r")
            .with_expires_at(SystemTime::now() - Duration::from_secs(1));
        store.save(&c, &expired, None).await.unwrap();
        let refresher = Arc::new(Counting::default());
        let m =
            Arc::new(TokenManager::builder(c.clone(), store.clone(), refresher.clone()).build());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    m.access_token()
                        .await
                        .map(|s| s.expose_secret().to_string())
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "access-1");
        }
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        // claim (v2) + new token (v3)
        assert_eq!(store.load(&c).await.unwrap().unwrap().version, 3);
        let d = format!("{m:?}");
        assert!(!d.contains("access-"), "{d}");
    }

    #[tokio::test]
    async fn waits_for_a_live_lease_and_takes_over_an_expired_one() {
        let store = Arc::new(MemoryTokenStore::new());
        let c = ConnectionId::from("c");
        let now = SystemTime::now();
        let mut leased = TokenSet::bearer("access-0")
            .with_refresh_token("r")
            .with_expires_at(now - Duration::from_secs(1));
        leased.refresh_lease = Some(RefreshLease::new("other", unix_ms(now) + 60_000));
        let v = store.save(&c, &leased, None).await.unwrap();
        let refresher = Arc::new(Counting::default());
        let m = TokenManager::builder(c.clone(), store.clone(), refresher.clone())
            .poll_interval(Duration::from_millis(5))
            .build();
        // The other process lands its token a little later: we use it, without a request.
        let writer = {
            let store = store.clone();
            let c = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let fresh = TokenSet::bearer("from-other")
                    .with_refresh_token("r2")
                    .with_expires_in(Duration::from_secs(3600), SystemTime::now());
                store.save(&c, &fresh, Some(v)).await.unwrap();
            })
        };
        let got = m.access_token().await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.expose_secret(), "from-other");
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 0);

        // A lease that ran out (its holder died) is taken over.
        let cur = store.load(&c).await.unwrap().unwrap();
        let mut stale = TokenSet::bearer("access-x")
            .with_refresh_token("r3")
            .with_expires_at(now - Duration::from_secs(1));
        stale.refresh_lease = Some(RefreshLease::new("dead", unix_ms(now) - 1));
        store.save(&c, &stale, Some(cur.version)).await.unwrap();
        let m2 = TokenManager::builder(c.clone(), store.clone(), refresher.clone()).build();
        let got = m2.access_token().await.unwrap();
        assert_eq!(got.expose_secret(), "access-1");
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        let stored = store.load(&c).await.unwrap().unwrap().value;
        assert!(stored.refresh_lease.is_none());
    }

    #[tokio::test]
    async fn nothing_stored_is_unauthenticated() {
        let store = Arc::new(MemoryTokenStore::new());
        let m = TokenManager::builder(
            ConnectionId::from("c"),
            store,
            Arc::new(Counting::default()),
        )
        .build();
        let e = m.token().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    }
}
