//! `TokenManager`: one per connection; hands out fresh access tokens, refreshing once however
//! many tasks (and processes) ask.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::http::{Credentials, RetryConfig};
use crate::model::ConnectionId;
use crate::token::{RefreshLease, TokenSet, TokenStore, Versioned, duration_ms};
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

/// Default refresh-ahead margin (capped at half of each token's lifetime).
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);
/// Default time another process may hold a refresh claim before this one takes over.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Default interval at which a waiting manager re-reads the store (and the first delay before
/// an unsaved token set is offered to the store again).
pub const DEFAULT_POLL: Duration = Duration::from_millis(100);

/// The longest wait between two attempts to save a refreshed token set the store refused.
const MAX_SAVE_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How the manager retries a refresh that failed temporarily (token endpoint 5xx, 429,
/// connect error, timeout) when no valid token is left: 4 attempts in all, within 10 s,
/// waits from 200 ms doubling up to 2 s with jitter (a `Retry-After` raises a wait; one that
/// would end after the 10 s gives up at once). `invalid_grant` and other 4xx answers are
/// never retried.
pub fn default_refresh_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 4,
        max_elapsed: Duration::from_secs(10),
        min_delay: Duration::from_millis(200),
        max_delay: Duration::from_secs(2),
        factor: 2.0,
        jitter: true,
    }
}

/// Builds a [`TokenManager`].
pub struct TokenManagerBuilder {
    connection: ConnectionId,
    store: Arc<dyn TokenStore>,
    refresher: Arc<dyn TokenRefresher>,
    skew: Duration,
    lease: Duration,
    poll: Duration,
    retry: RetryConfig,
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
    /// Refresh this long before expiry (default 60 s). The margin actually used for a token
    /// is at most half of its lifetime ([`TokenSet::lifetime`]), so short-lived tokens are not
    /// refreshed again as soon as they arrive.
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

    /// How a refresh that failed temporarily is retried when no valid token is left
    /// (default [`default_refresh_retry`]; [`RetryConfig::none`] turns retrying off).
    /// Out-of-range values are brought into range: at least one attempt, `max_delay` at least
    /// `min_delay`, a factor of at least 1.
    pub fn refresh_retry(mut self, mut retry: RetryConfig) -> Self {
        retry.max_attempts = retry.max_attempts.max(1);
        retry.max_delay = retry.max_delay.max(retry.min_delay);
        if !(retry.factor.is_finite() && retry.factor >= 1.0) {
            retry.factor = 1.0;
        }
        self.retry = retry;
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
            retry: self.retry,
            clock: self.clock,
            on_reauth_needed: self.on_reauth_needed,
            obtain_when_missing: self.obtain_when_missing,
            holder: format!("{:016x}", rand::random::<u64>()),
            cache: RwLock::new(None),
            unsaved: AtomicBool::new(false),
            flight: tokio::sync::Mutex::new(Flight::default()),
        }
    }
}

#[derive(Default)]
struct Flight {
    /// The store version whose grant is known to be gone (`invalid_grant`).
    dead: Option<u64>,
    /// A refreshed token set the store refused to save (I/O, not a lost race).
    unsaved: Option<Unsaved>,
    /// The refresh task under way (it outlives a cancelled caller; see
    /// [`TokenManager::attempt`]), and the stored version it started from.
    in_flight: Option<tokio::task::JoinHandle<Attempt>>,
    orphan_base: u64,
}

/// What a refresh task did.
struct Attempt {
    base_version: u64,
    refreshed: Result<TokenSet>,
    /// The compare-and-swap save of the refreshed set (`None` when the refresh failed).
    saved: Option<Result<u64>>,
}

/// A refresh task's outcome, once recorded.
enum Settled {
    /// Refreshed and saved.
    Saved(TokenSet),
    /// Refreshed, not saved yet (kept in memory).
    Unsaved(TokenSet),
    /// Refreshed, but the store changed meanwhile: the stored set wins.
    Lost,
    /// The grant is gone.
    Dead(Error),
    /// The refresh failed otherwise.
    Failed(Error),
}

/// The attempt of a joined task; a task that panicked is a failed refresh.
fn joined_attempt(
    joined: std::result::Result<Attempt, tokio::task::JoinError>,
    base_version: u64,
) -> Attempt {
    joined.unwrap_or_else(|e| Attempt {
        base_version,
        refreshed: Err(
            Error::new(ErrorKind::Unexpected, "the token refresh task failed").set_source(e),
        ),
        saved: None,
    })
}

/// A refreshed token set not yet in the store. It may hold the only copy of a rotated
/// refresh token, so it is kept, used, and offered to the store again until it is taken.
struct Unsaved {
    tokens: TokenSet,
    /// The stored version it replaces (compare-and-swap).
    base: u64,
    /// Not before this instant is the save tried again (unless a refresh needs the store).
    next_try: tokio::time::Instant,
    /// The current wait between attempts (doubles up to [`MAX_SAVE_RETRY_DELAY`]).
    delay: Duration,
}

/// What triggered a refresh.
#[derive(Clone, Copy)]
enum Need<'a> {
    /// A token that does not expire within the skew.
    Fresh,
    /// A token other than this one (the `Authorization` value the API rejected with 401, or
    /// the one current when [`TokenManager::force_refresh`] was called).
    Not(&'a [u8]),
}

/// Hands out the access token of one connection, refreshing it ahead of expiry.
///
/// Share it as `Arc<TokenManager>`; it implements [`Credentials`] for the HTTP stack.
///
/// # Behavior
/// - The token set is loaded from the [`TokenStore`] on first use and cached.
/// - A cached token that does not expire within the skew is returned without I/O. The skew
///   used for a token is the configured one (default 60 s) capped at half of the token's
///   lifetime, so a 2-second token is refreshed 1 s before expiry, not at once.
/// - Otherwise one task refreshes (an async mutex plus a re-check under it), the others wait
///   and reuse its result: one token request however many tasks ask.
/// - Across processes sharing a store, the refresh is first claimed by a compare-and-swap save
///   of the current set with a [`RefreshLease`] (holder, until). A process that finds another's
///   live lease waits for that process's token (re-reading the store every poll interval)
///   instead of spending the same refresh token, so a rotated refresh token is never sent
///   twice. An expired lease (its holder died or hung) is taken over; a holder whose refresh
///   failed temporarily releases it.
/// - The new token set is saved (compare-and-swap on the claimed version) before the new access
///   token is handed out. If the save loses the race, the stored set is reloaded and used when
///   valid. If the save fails otherwise (disk full, database busy), the new set may hold the
///   only copy of a rotated refresh token: it is kept in memory and used (the next refresh
///   spends its refresh token, never the stored one), and its save is tried again on later
///   calls (waits from the poll interval doubling up to 30 s) until the store takes it. It is
///   lost only if the process ends first (an error is logged when the manager is dropped with
///   it). Meanwhile other processes see this process's lease until it runs out.
/// - A refresh and the save of its result run as a task of their own: a caller cancelled
///   meanwhile (a timeout, a `select!`) does not cut the platform's rotation of the refresh
///   token off from its save; the next caller waits for that task and uses its result.
/// - A refresh that fails temporarily (token endpoint 5xx or 429, connect error, timeout) while
///   no valid token is left is retried here with bounded backoff ([`default_refresh_retry`]),
///   so direct callers get the same resilience as the HTTP stack. A refresh ahead of expiry
///   that fails temporarily returns the still-valid token at once instead.
/// - `invalid_grant` (or no refresh token): the hook is called once, the error is
///   `Unauthenticated` (permanent), and from then on every call returns that error without a
///   token request, until the connection is re-authorized: new tokens saved through
///   [`TokenManager::replace`], or a newer version appearing in the store (another process
///   re-authorized it).
/// - A token without expiry (Salesforce) is refreshed only after a 401
///   ([`Credentials::refresh_after_unauthorized`]) or [`TokenManager::force_refresh`].
pub struct TokenManager {
    connection: ConnectionId,
    store: Arc<dyn TokenStore>,
    refresher: Arc<dyn TokenRefresher>,
    skew: Duration,
    lease: Duration,
    poll: Duration,
    retry: RetryConfig,
    clock: Clock,
    on_reauth_needed: Option<ReauthHook>,
    obtain_when_missing: bool,
    holder: String,
    cache: RwLock<Option<Versioned<TokenSet>>>,
    /// Mirrors `Flight::unsaved.is_some()` for the lock-free fast path.
    unsaved: AtomicBool,
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
            .field("unsaved", &self.unsaved.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl Drop for TokenManager {
    fn drop(&mut self) {
        if self.flight.get_mut().unsaved.is_some() {
            tracing::error!(connection = %self.connection,
                "token manager dropped with a refreshed token set the store never took; \
                 the connection may need re-authorization");
        }
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
            retry: default_refresh_retry(),
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
    /// `Unauthenticated` (permanent) when nothing is stored or the grant is gone; the
    /// refresher's errors (`Network`, `Upstream`, `RateLimited`, temporary) when a needed
    /// refresh still failed after the retries; `Storage` from the store.
    pub async fn token(&self) -> Result<TokenSet> {
        if !self.unsaved.load(Ordering::Acquire)
            && let Some(t) = self.cached_if(Need::Fresh)
        {
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

    /// Refreshes now, whatever the expiry says (after a permission change, or when the host
    /// learned that the token was revoked), and returns the new token set.
    ///
    /// Single-flight like the rest: callers that ask while a refresh is under way (forced or
    /// not) get its result, so concurrent calls cause one token request.
    ///
    /// # Errors
    /// As [`TokenManager::token`]; a still-valid token is not returned in place of a failed
    /// forced refresh.
    pub async fn force_refresh(&self) -> Result<TokenSet> {
        // The token to replace, seen before waiting for the lock: whoever refreshed while we
        // waited has replaced it already.
        let current = match self.read_cache() {
            Some(c) => c.value,
            None => match self.store.load(&self.connection).await? {
                Some(v) => v.value,
                None => {
                    return Err(self.gone("no tokens stored for this connection; connect it first"));
                }
            },
        };
        let replaced = bearer_header_string(&current);
        let mut flight = self.flight.lock().await;
        self.obtain(&mut flight, Need::Not(replaced.as_bytes()))
            .await
    }

    /// Stores a new token set for the connection (after a code exchange or a re-authorization),
    /// replacing whatever is stored, and uses it from now on.
    ///
    /// # Errors
    /// `Storage` from the store; `Conflict` if the store keeps changing under us.
    pub async fn replace(&self, tokens: TokenSet) -> Result<()> {
        let mut flight = self.flight.lock().await;
        // A refresh whose caller was cancelled finishes first, so that it cannot touch the
        // state after the new tokens are in.
        self.settle_orphan(&mut flight).await;
        for _ in 0..5 {
            let current = self.store.load(&self.connection).await?.map(|v| v.version);
            match self.store.save(&self.connection, &tokens, current).await {
                Ok(version) => {
                    flight.dead = None;
                    self.set_unsaved(&mut flight, None);
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

    fn set_unsaved(&self, flight: &mut Flight, unsaved: Option<Unsaved>) {
        self.unsaved.store(unsaved.is_some(), Ordering::Release);
        flight.unsaved = unsaved;
    }

    /// The refresh-ahead margin for `t`: the configured skew, at most half its lifetime.
    fn skew_for(&self, t: &TokenSet) -> Duration {
        match t.lifetime() {
            Some(lifetime) => self.skew.min(lifetime / 2),
            None => self.skew,
        }
    }

    fn satisfies(&self, t: &TokenSet, need: Need<'_>) -> bool {
        match need {
            Need::Fresh => !t.expires_within(self.skew_for(t), (self.clock)()),
            Need::Not(rejected) => {
                let header = bearer_header_string(t);
                !bool::from(header.as_bytes().ct_eq(rejected))
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

    fn too_many_conflicts(&self) -> Error {
        Error::new(
            ErrorKind::Conflict,
            "could not settle the token refresh with other processes",
        )
        .temporary()
        .with_context("connection", &self.connection)
    }

    /// The stored token set, checked against the dead grant *before* it is cached, so that a
    /// dead token is never handed out by the fast path.
    async fn load_current(&self, flight: &mut Flight) -> Result<Versioned<TokenSet>> {
        let current = match self.store.load(&self.connection).await? {
            Some(c) => c,
            None if self.obtain_when_missing => return self.obtain_first().await,
            None => {
                self.write_cache(None);
                return Err(self.gone("no tokens stored for this connection; connect it first"));
            }
        };
        if flight.dead == Some(current.version) {
            self.write_cache(None);
            return Err(self.gone("the grant of this connection is gone"));
        }
        flight.dead = None;
        self.write_cache(Some(current.clone()));
        Ok(current)
    }

    /// Runs the grant for a first token set (client credentials, JWT bearer: no user grant to
    /// wait for) and stores it; if another process stored one first, uses that.
    async fn obtain_first(&self) -> Result<Versioned<TokenSet>> {
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

    /// Offers the unsaved token set to the store again (when due, or at once with `now`).
    async fn flush_unsaved(&self, flight: &mut Flight, now: bool) {
        let Some(unsaved) = &mut flight.unsaved else {
            return;
        };
        let at = tokio::time::Instant::now();
        if !now && at < unsaved.next_try {
            return;
        }
        match self
            .store
            .save(&self.connection, &unsaved.tokens, Some(unsaved.base))
            .await
        {
            Ok(version) => {
                tracing::info!(connection = %self.connection,
                    "refreshed token set saved after earlier store failures");
                self.write_cache(Some(Versioned {
                    value: unsaved.tokens.clone(),
                    version,
                }));
                self.set_unsaved(flight, None);
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                // Someone else wrote the connection meanwhile (a re-authorization, or a
                // process that took our lease over): the stored set wins.
                tracing::warn!(connection = %self.connection,
                    "the store changed while a refreshed token set waited to be saved; \
                     using the stored one");
                self.write_cache(None);
                self.set_unsaved(flight, None);
            }
            Err(e) => {
                unsaved.delay = unsaved
                    .delay
                    .saturating_mul(2)
                    .clamp(Duration::from_millis(1), MAX_SAVE_RETRY_DELAY);
                unsaved.next_try = at + unsaved.delay;
                tracing::warn!(connection = %self.connection, error = %e,
                    "refreshed token set still not saved; keeping it in memory");
            }
        }
    }

    /// How long to wait before retrying a refresh that failed with `e`, if at all.
    fn retry_wait(
        &self,
        e: &Error,
        attempts: u32,
        started: tokio::time::Instant,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Option<Duration> {
        let transient = e.is_temporary()
            && matches!(
                e.kind(),
                ErrorKind::Upstream | ErrorKind::Network | ErrorKind::RateLimited
            );
        if !transient || attempts >= self.retry.max_attempts {
            return None;
        }
        let mut wait = backoff.next().unwrap_or(self.retry.max_delay);
        if let Some(hint) = e.retry_after() {
            wait = wait.max(hint);
        }
        let remaining = self.retry.max_elapsed.saturating_sub(started.elapsed());
        (wait <= remaining).then_some(wait)
    }

    /// One refresh and the save of its result, run as a task of its own: if the caller is
    /// cancelled (a timeout, a `select!`) while the platform is rotating the refresh token,
    /// the task still saves the result, and the next caller settles it (see
    /// [`TokenManager::settle_orphan`]) before doing anything else. The handle waits in
    /// `flight.in_flight` until it is settled.
    async fn attempt(&self, flight: &mut Flight, current: &Versioned<TokenSet>) -> Settled {
        let refresher = self.refresher.clone();
        let store = self.store.clone();
        let connection = self.connection.clone();
        let base = current.clone();
        let work = async move {
            let refreshed = refresher.refresh(&base.value).await.map(|mut new| {
                new.refresh_lease = None;
                new
            });
            let saved = match &refreshed {
                Ok(new) => Some(store.save(&connection, new, Some(base.version)).await),
                Err(_) => None,
            };
            Attempt {
                base_version: base.version,
                refreshed,
                saved,
            }
        };
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.spawn(work),
            // Not inside a runtime (cannot happen with reqwest): run it here.
            Err(_) => {
                let attempt = work.await;
                return self.settle(flight, attempt);
            }
        };
        flight.orphan_base = current.version;
        let handle = flight.in_flight.insert(handle);
        let joined = handle.await;
        flight.in_flight = None;
        self.settle(flight, joined_attempt(joined, current.version))
    }

    /// Settles a refresh whose caller was cancelled before it finished.
    async fn settle_orphan(&self, flight: &mut Flight) {
        if let Some(handle) = flight.in_flight.as_mut() {
            let base = flight.orphan_base;
            let joined = handle.await;
            flight.in_flight = None;
            tracing::info!(connection = %self.connection,
                "settling a token refresh whose caller was cancelled");
            let _ = self.settle(flight, joined_attempt(joined, base));
        }
    }

    /// Records the outcome of a refresh attempt (cache, unsaved set, dead grant, hook).
    fn settle(&self, flight: &mut Flight, attempt: Attempt) -> Settled {
        let base = attempt.base_version;
        match (attempt.refreshed, attempt.saved) {
            (Ok(new), Some(Ok(version))) => {
                self.set_unsaved(flight, None);
                self.write_cache(Some(Versioned {
                    value: new.clone(),
                    version,
                }));
                Settled::Saved(new)
            }
            (Ok(_), Some(Err(e))) if e.kind() == ErrorKind::Conflict => {
                // Our lease was taken over (it outlived the lease time), or the connection
                // was re-authorized: the stored set wins; reload and use it, or refresh again.
                tracing::warn!(connection = %self.connection,
                    "refreshed token lost the store race; using the stored one");
                self.set_unsaved(flight, None);
                self.write_cache(None);
                Settled::Lost
            }
            (Ok(new), saved) => {
                // The platform may have rotated the refresh token: this set may be its only
                // copy. Keep it, use it, save it later.
                let error = saved.and_then(|r| r.err());
                tracing::error!(connection = %self.connection, error = ?error,
                    "cannot save the refreshed token set; keeping it in memory and retrying \
                     the save");
                self.write_cache(Some(Versioned {
                    value: new.clone(),
                    version: base,
                }));
                self.set_unsaved(
                    flight,
                    Some(Unsaved {
                        tokens: new.clone(),
                        base,
                        next_try: tokio::time::Instant::now() + self.poll,
                        delay: self.poll,
                    }),
                );
                Settled::Unsaved(new)
            }
            (Err(e), _) if e.kind() == ErrorKind::Unauthenticated => {
                flight.dead = Some(base);
                self.set_unsaved(flight, None);
                self.write_cache(None);
                tracing::warn!(connection = %self.connection,
                    "token refresh says the grant is gone; connection needs re-authorization");
                if let Some(hook) = &self.on_reauth_needed {
                    hook(&self.connection);
                }
                Settled::Dead(e.with_context("connection", &self.connection))
            }
            (Err(e), _) => Settled::Failed(e),
        }
    }

    /// The slow path, under the single-flight lock.
    async fn obtain(&self, flight: &mut Flight, need: Need<'_>) -> Result<TokenSet> {
        self.settle_orphan(flight).await;
        self.flush_unsaved(flight, false).await;
        // Another task may have refreshed while we waited for the lock.
        if let Some(t) = self.cached_if(need) {
            return Ok(t);
        }
        let started = tokio::time::Instant::now();
        let mut backoff = self.retry.backoff();
        let mut attempts = 0u32;
        let mut conflicts = 0u32;
        // Waiting for another process never takes much longer than one lease.
        let mut waiting_since: Option<tokio::time::Instant> = None;
        loop {
            if flight.unsaved.is_some() {
                // About to need the store: try it now.
                self.flush_unsaved(flight, true).await;
            }
            // The unsaved set, when there is one, is newer than anything stored; else the
            // store is the source of truth (another process may have refreshed).
            let from_memory = flight.unsaved.is_some();
            let mut current = match &flight.unsaved {
                Some(u) => Versioned {
                    value: u.tokens.clone(),
                    version: u.base,
                },
                None => self.load_current(flight).await?,
            };
            if self.satisfies(&current.value, need) {
                return Ok(current.value);
            }
            if !from_memory {
                let now_ms = unix_ms((self.clock)());
                match &current.value.refresh_lease {
                    Some(l) if l.holder != self.holder && l.until_ms > now_ms => {
                        // Another process is refreshing: wait for its token to land.
                        let since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() >= self.lease.saturating_mul(2) + self.poll {
                            return Err(Error::new(
                                ErrorKind::Conflict,
                                "timed out settling the token refresh with other processes",
                            )
                            .temporary()
                            .with_context("connection", &self.connection));
                        }
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
                            now_ms.saturating_add(duration_ms(self.lease)),
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
                            Err(e) if e.kind() == ErrorKind::Conflict => {
                                conflicts += 1;
                                if conflicts > 4 {
                                    return Err(self.too_many_conflicts());
                                }
                                continue;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            waiting_since = None;
            attempts += 1;
            tracing::debug!(connection = %self.connection, attempt = attempts,
                "refreshing access token");
            match self.attempt(flight, &current).await {
                Settled::Saved(new) | Settled::Unsaved(new) => return Ok(new),
                Settled::Lost => {
                    conflicts += 1;
                    if conflicts > 4 {
                        return Err(self.too_many_conflicts());
                    }
                    continue;
                }
                Settled::Dead(e) => return Err(e),
                Settled::Failed(e) => {
                    if !from_memory {
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
                    }
                    // Refreshing ahead of time: the current token still works for a while.
                    if let (Need::Fresh, Some(at)) = (need, current.value.expires_at_ms)
                        && at > unix_ms((self.clock)())
                    {
                        tracing::warn!(connection = %self.connection, error = %e,
                            "token refresh failed; using the current token until it expires");
                        return Ok(current.value);
                    }
                    match self.retry_wait(&e, attempts, started, &mut backoff) {
                        Some(wait) => {
                            tracing::warn!(connection = %self.connection, error = %e,
                                attempt = attempts, wait_ms = duration_ms(wait),
                                "token refresh failed; retrying");
                            tokio::time::sleep(wait).await;
                        }
                        None => return Err(e.with_context("connection", &self.connection)),
                    }
                }
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
        let rejected = rejected.as_bytes();
        if !self.unsaved.load(Ordering::Acquire) && self.cached_if(Need::Not(rejected)).is_some() {
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

    /// A wall clock the tests move by hand.
    #[derive(Clone, Default)]
    struct Manual(Arc<std::sync::atomic::AtomicU64>);

    impl Manual {
        fn clock(&self) -> Clock {
            let offset = self.0.clone();
            Arc::new(move || SystemTime::now() + Duration::from_secs(offset.load(Ordering::SeqCst)))
        }
        fn advance(&self, secs: u64) {
            self.0.fetch_add(secs, Ordering::SeqCst);
        }
        fn now(&self) -> SystemTime {
            (self.clock())()
        }
    }

    /// A token endpoint with rotation and reuse detection: each refresh must present the
    /// refresh token it issued last. Results can be scripted (errors first).
    #[derive(Debug)]
    struct Endpoint {
        calls: AtomicUsize,
        reuse: AtomicUsize,
        latest_rt: std::sync::Mutex<String>,
        script: std::sync::Mutex<std::collections::VecDeque<Error>>,
        lifetime: Duration,
        latency: Duration,
        clock_offset: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Endpoint {
        fn new(lifetime: Duration, clock: &Manual) -> Self {
            Endpoint {
                calls: AtomicUsize::new(0),
                reuse: AtomicUsize::new(0),
                latest_rt: std::sync::Mutex::new("r0".into()),
                script: Default::default(),
                lifetime,
                latency: Duration::ZERO,
                clock_offset: clock.0.clone(),
            }
        }
        fn with_latency(mut self, latency: Duration) -> Self {
            self.latency = latency;
            self
        }
        fn fail_with(self, errors: impl IntoIterator<Item = Error>) -> Self {
            self.script.lock().unwrap().extend(errors);
            self
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl TokenRefresher for Endpoint {
        async fn refresh(&self, current: &TokenSet) -> Result<TokenSet> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            if let Some(e) = self.script.lock().unwrap().pop_front() {
                return Err(e);
            }
            let mut latest = self.latest_rt.lock().unwrap();
            let presented = current
                .refresh_token
                .as_ref()
                .map(|r| r.expose_secret().to_string());
            if presented.as_deref() != Some(latest.as_str()) {
                self.reuse.fetch_add(1, Ordering::SeqCst);
                return Err(Error::new(ErrorKind::Unauthenticated, "invalid_grant").permanent());
            }
            *latest = format!("r{n}");
            let now =
                SystemTime::now() + Duration::from_secs(self.clock_offset.load(Ordering::SeqCst));
            Ok(TokenSet::bearer(format!("access-{n}"))
                .with_refresh_token(format!("r{n}"))
                .with_expires_in(self.lifetime, now))
        }
    }

    /// Fails the next N saves of a refreshed set (no lease) with a storage error.
    #[derive(Debug, Default)]
    struct FlakyStore {
        inner: MemoryTokenStore,
        fail: AtomicUsize,
    }

    #[async_trait]
    impl TokenStore for FlakyStore {
        async fn load(&self, c: &ConnectionId) -> Result<Option<Versioned<TokenSet>>> {
            self.inner.load(c).await
        }
        async fn save(&self, c: &ConnectionId, t: &TokenSet, expected: Option<u64>) -> Result<u64> {
            if t.refresh_lease.is_none()
                && self
                    .fail
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(Error::storage("database is locked"));
            }
            self.inner.save(c, t, expected).await
        }
        async fn delete(&self, c: &ConnectionId) -> Result<()> {
            self.inner.delete(c).await
        }
    }

    fn seeded(clock: &Manual, expires_in_secs: Option<u64>) -> TokenSet {
        let t = TokenSet::bearer("access-0").with_refresh_token("r0");
        match expires_in_secs {
            Some(s) => t.with_expires_in(Duration::from_secs(s), clock.now()),
            None => t,
        }
    }

    fn secret(t: &TokenSet) -> String {
        t.access_token.expose_secret().to_string()
    }

    #[tokio::test]
    async fn a_dead_grant_is_never_handed_out_again() {
        let clock = Manual::default();
        let store = Arc::new(MemoryTokenStore::new());
        let c = ConnectionId::from("c");
        // No expiry (Salesforce-like): only a 401 leads to a refresh.
        store.save(&c, &seeded(&clock, None), None).await.unwrap();
        let endpoint = Arc::new(
            Endpoint::new(Duration::from_secs(3600), &clock).fail_with([Error::new(
                ErrorKind::Unauthenticated,
                "invalid_grant",
            )
            .permanent()]),
        );
        let hooks = Arc::new(AtomicUsize::new(0));
        let h = hooks.clone();
        let m = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .on_reauth_needed(move |_| {
                h.fetch_add(1, Ordering::SeqCst);
            })
            .build();
        let dead = m.authorization().await.unwrap();
        let e = m.refresh_after_unauthorized(&dead).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        for _ in 0..3 {
            let e = m.access_token().await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
            assert!(!e.is_temporary());
            assert_eq!(e.context_value("action"), Some("needs re-authorization"));
            assert!(m.authorization().await.is_err());
            assert!(m.force_refresh().await.is_err());
        }
        assert_eq!(endpoint.calls(), 1);
        assert_eq!(hooks.load(Ordering::SeqCst), 1);
        // Another process re-authorizes: a newer version in the store revives the manager.
        let v = store.load(&c).await.unwrap().unwrap().version;
        let fresh = TokenSet::bearer("after-reauth").with_refresh_token("r0");
        store.save(&c, &fresh, Some(v)).await.unwrap();
        assert_eq!(
            m.access_token().await.unwrap().expose_secret(),
            "after-reauth"
        );
        assert_eq!(endpoint.calls(), 1);
    }

    #[tokio::test]
    async fn short_lived_tokens_cap_the_skew() {
        let clock = Manual::default();
        let store = Arc::new(MemoryTokenStore::new());
        let c = ConnectionId::from("c");
        let mut expired = seeded(&clock, Some(2));
        expired.expires_at_ms = Some(unix_ms(clock.now()) - 1);
        store.save(&c, &expired, None).await.unwrap();
        let endpoint = Arc::new(Endpoint::new(Duration::from_secs(2), &clock));
        let m = Arc::new(
            TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
                .clock(clock.clock())
                .build(),
        );
        let tasks: Vec<_> = (0..20)
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
        assert_eq!(endpoint.calls(), 1);
        // The token's lifetime is known, and the margin is half of it.
        let t = m.token().await.unwrap();
        assert_eq!(t.lifetime(), Some(Duration::from_secs(2)));
        assert_eq!(m.skew_for(&t), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_bounded_backoff() {
        let clock = Manual::default();
        let c = ConnectionId::from("c");
        let temporary = || {
            [
                Error::new(ErrorKind::Upstream, "token endpoint failed").temporary(),
                Error::new(ErrorKind::Network, "token endpoint timed out").temporary(),
                Error::new(ErrorKind::RateLimited, "slow down")
                    .with_retry_after(Duration::from_secs(1)),
            ]
        };
        // Three transient failures, then success: one call succeeds.
        let store = Arc::new(MemoryTokenStore::new());
        store
            .save(&c, &seeded(&clock, Some(0)), None)
            .await
            .unwrap();
        let endpoint =
            Arc::new(Endpoint::new(Duration::from_secs(3600), &clock).fail_with(temporary()));
        let m = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .build();
        let started = tokio::time::Instant::now();
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-4");
        assert_eq!(endpoint.calls(), 4);
        assert!(started.elapsed() <= default_refresh_retry().max_elapsed);
        // The lease was released after each failure and the final set has none.
        assert!(
            store
                .load(&c)
                .await
                .unwrap()
                .unwrap()
                .value
                .refresh_lease
                .is_none()
        );

        // Failing for good: bounded in attempts, the last error comes back.
        let store = Arc::new(MemoryTokenStore::new());
        store
            .save(&c, &seeded(&clock, Some(0)), None)
            .await
            .unwrap();
        let endpoint = Arc::new(
            Endpoint::new(Duration::from_secs(3600), &clock)
                .fail_with((0..10).map(|_| Error::new(ErrorKind::Upstream, "down").temporary())),
        );
        let m = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .build();
        let e = m.access_token().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.is_temporary());
        assert_eq!(endpoint.calls(), 4);

        // Never retried: invalid_grant, other 4xx, and a Retry-After beyond the budget.
        for (error, kind) in [
            (
                Error::new(ErrorKind::Unauthenticated, "invalid_grant").permanent(),
                ErrorKind::Unauthenticated,
            ),
            (
                Error::config("invalid_client").permanent(),
                ErrorKind::Config,
            ),
            (
                Error::new(ErrorKind::Upstream, "token endpoint answered an error").permanent(),
                ErrorKind::Upstream,
            ),
            (
                Error::new(ErrorKind::RateLimited, "later")
                    .with_retry_after(Duration::from_secs(3600)),
                ErrorKind::RateLimited,
            ),
        ] {
            let store = Arc::new(MemoryTokenStore::new());
            store
                .save(&c, &seeded(&clock, Some(0)), None)
                .await
                .unwrap();
            let endpoint =
                Arc::new(Endpoint::new(Duration::from_secs(3600), &clock).fail_with([error]));
            let m = TokenManager::builder(c.clone(), store, endpoint.clone())
                .clock(clock.clock())
                .build();
            assert_eq!(m.access_token().await.unwrap_err().kind(), kind);
            assert_eq!(endpoint.calls(), 1, "{kind:?}");
        }

        // Retrying can be turned off.
        let store = Arc::new(MemoryTokenStore::new());
        store
            .save(&c, &seeded(&clock, Some(0)), None)
            .await
            .unwrap();
        let endpoint =
            Arc::new(Endpoint::new(Duration::from_secs(3600), &clock).fail_with(temporary()));
        let m = TokenManager::builder(c.clone(), store, endpoint.clone())
            .clock(clock.clock())
            .refresh_retry(RetryConfig::none())
            .build();
        assert_eq!(
            m.access_token().await.unwrap_err().kind(),
            ErrorKind::Upstream
        );
        assert_eq!(endpoint.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refreshed_set_the_store_refused_is_kept_and_saved_later() {
        let clock = Manual::default();
        let c = ConnectionId::from("c");
        let store = Arc::new(FlakyStore::default());
        store
            .save(&c, &seeded(&clock, Some(0)), None)
            .await
            .unwrap();
        let endpoint = Arc::new(Endpoint::new(Duration::from_secs(3600), &clock));
        let m = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .build();
        store.fail.store(3, Ordering::SeqCst);
        // The refresh rotated r0 -> r1 but the save failed: the new token is used anyway.
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-1");
        assert!(format!("{m:?}").contains("unsaved: true"));
        let stored = store.load(&c).await.unwrap().unwrap().value;
        assert_eq!(stored.refresh_token.as_ref().unwrap().expose_secret(), "r0");
        // Later calls offer it to the store again (waits 100 ms, 200 ms, 400 ms...).
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-1");
        }
        assert_eq!(store.fail.load(Ordering::SeqCst), 0);
        let stored = store.load(&c).await.unwrap().unwrap().value;
        assert_eq!(stored.refresh_token.as_ref().unwrap().expose_secret(), "r1");
        assert!(format!("{m:?}").contains("unsaved: false"));

        // The store fails for longer than the token lives: the next refresh spends the
        // unsaved refresh token (r2 -> r3), never the stored one.
        clock.advance(7200);
        store.fail.store(50, Ordering::SeqCst);
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-2");
        clock.advance(7200);
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-3");
        store.fail.store(0, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(60)).await;
        m.access_token().await.unwrap();
        let stored = store.load(&c).await.unwrap().unwrap().value;
        assert_eq!(stored.refresh_token.as_ref().unwrap().expose_secret(), "r3");
        assert_eq!(endpoint.reuse.load(Ordering::SeqCst), 0);
        // And a fresh manager (another process, a restart) continues from the store.
        clock.advance(7200);
        let m2 = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .build();
        assert_eq!(m2.access_token().await.unwrap().expose_secret(), "access-4");
        assert_eq!(endpoint.reuse.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn force_refresh_is_single_flight() {
        let clock = Manual::default();
        let c = ConnectionId::from("c");
        let store = Arc::new(MemoryTokenStore::new());
        store
            .save(&c, &seeded(&clock, Some(3600)), None)
            .await
            .unwrap();
        let endpoint = Arc::new(
            Endpoint::new(Duration::from_secs(3600), &clock)
                .with_latency(Duration::from_millis(20)),
        );
        let m = Arc::new(
            TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
                .clock(clock.clock())
                .build(),
        );
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-0");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move { m.force_refresh().await.map(|t| secret(&t)) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "access-1");
        }
        assert_eq!(endpoint.calls(), 1);
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-1");
        // A later call refreshes again; a cold manager forces from the stored set.
        assert_eq!(secret(&m.force_refresh().await.unwrap()), "access-2");
        let cold = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .build();
        assert_eq!(secret(&cold.force_refresh().await.unwrap()), "access-3");
        assert_eq!(endpoint.calls(), 3);
        assert_eq!(endpoint.reuse.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_cancelled_mid_refresh_loses_no_rotated_token() {
        let clock = Manual::default();
        let c = ConnectionId::from("c");
        let store = Arc::new(FlakyStore::default());
        store
            .save(&c, &seeded(&clock, Some(0)), None)
            .await
            .unwrap();
        let endpoint = Arc::new(
            Endpoint::new(Duration::from_secs(3600), &clock)
                .with_latency(Duration::from_millis(50)),
        );
        let m = TokenManager::builder(c.clone(), store.clone(), endpoint.clone())
            .clock(clock.clock())
            .build();
        // The caller gives up while the platform is rotating r0 -> r1.
        let cut = tokio::time::timeout(Duration::from_millis(10), m.access_token()).await;
        assert!(cut.is_err(), "the caller was cancelled");
        // The next caller gets the rotated set: no second refresh, no reuse of r0.
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-1");
        assert_eq!(endpoint.calls(), 1);
        assert_eq!(endpoint.reuse.load(Ordering::SeqCst), 0);
        let stored = store.load(&c).await.unwrap().unwrap().value;
        assert_eq!(stored.refresh_token.as_ref().unwrap().expose_secret(), "r1");

        // Same when the save of the orphaned refresh fails: the set is kept in memory.
        clock.advance(7200);
        store.fail.store(1, Ordering::SeqCst);
        let cut = tokio::time::timeout(Duration::from_millis(10), m.access_token()).await;
        assert!(cut.is_err());
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-2");
        assert_eq!(endpoint.calls(), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        m.access_token().await.unwrap();
        let stored = store.load(&c).await.unwrap().unwrap().value;
        assert_eq!(stored.refresh_token.as_ref().unwrap().expose_secret(), "r2");
        clock.advance(7200);
        assert_eq!(m.access_token().await.unwrap().expose_secret(), "access-3");
        assert_eq!(endpoint.reuse.load(Ordering::SeqCst), 0);
    }
}
