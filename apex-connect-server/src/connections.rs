//! Configured connections -> connectors, through the platforms the host compiled in.
//!
//! The server names no platform: it looks the connection's `platform` up in the host's
//! [`Platforms`] and lets the descriptor check the settings, core resolve the authentication
//! ([`resolve_auth`]: a static credential, refresh-token rotation, client credentials or JWT
//! bearer), and the descriptor build the connector.

use std::sync::Arc;

use apex_connect_core::platform::{
    AuthInputs, BuildContext, ConnectionAuth, Platform, Platforms, SecretKind, resolve_auth,
};
use apex_connect_core::store::{ConnectionStatus, ConnectionStore, StateStore};
use apex_connect_core::{
    ConnectionId, Connector, Error, Result, Secrets, Settings, TokenManager, TokenStore,
};

use crate::config::ConnectionConfig;

/// The secret names core reads for every platform besides the platform's own: the OAuth
/// client secret and the JWT-bearer private key.
pub const SHARED_SECRETS: [&str; 2] = ["client_secret", "private_key"];

/// Checks a configured connection against its platform, without building anything: the
/// platform is compiled in, its settings are valid ([`Platform::check_settings`]: a misspelt
/// setting fails here, at start), the shared authentication settings parse, and the `env`
/// table names only secrets the platform or core reads. Returns the platform and the
/// settings.
///
/// # Errors
/// `Config` naming the connection and what is wrong.
pub fn check<'p>(
    platforms: &'p Platforms,
    connection: &ConnectionConfig,
) -> Result<(&'p Arc<dyn Platform>, Settings)> {
    let with = |e: Error| e.with_context("connection", &connection.id);
    let platform = platforms.get(&connection.platform).map_err(with)?;
    let settings = connection.settings()?;
    platform.check_settings(&settings).map_err(with)?;
    settings.auth().map_err(with)?;
    for name in connection.env.keys() {
        let known = platform.secrets().iter().any(|s| s.name == name)
            || SHARED_SECRETS.contains(&name.as_str());
        if !known {
            let names: Vec<&str> = platform
                .secrets()
                .iter()
                .map(|s| s.name)
                .chain(SHARED_SECRETS)
                .collect();
            return Err(Error::config("the platform reads no secret of this name")
                .with_context("connection", &connection.id)
                .with_context("secret", name)
                .with_context("known", names.join(",")));
        }
    }
    Ok((platform, settings))
}

/// Whether the store holds OAuth tokens for the connection; a store error counts as "yes"
/// (stored but unreadable, e.g. another encryption key), so the error shows at first use
/// instead of a silent fall back to a static credential.
async fn tokens_stored(store: &dyn TokenStore, id: &ConnectionId) -> bool {
    match store.load(id).await {
        Ok(t) => t.is_some(),
        Err(e) => {
            tracing::warn!(connection = %id, error = %e, "cannot read the stored OAuth tokens");
            true
        }
    }
}

/// Builds the connector of a configured connection: [`check`], secrets from the environment
/// through its `env` table, authentication resolved by core ([`resolve_auth`], with the store
/// holding the OAuth tokens; a dead grant marks the connection `needs_reauth` in the store,
/// see [`mark_needs_reauth`]), then [`Platform::build`].
///
/// # Errors
/// `Config` for an unknown platform, bad settings, a missing secret or an unsupported grant.
pub async fn build(
    platforms: &Platforms,
    connection: &ConnectionConfig,
    store: &Arc<dyn StateStore>,
) -> Result<Arc<dyn Connector>> {
    build_with_secrets(platforms, connection, &connection.secrets(), store).await
}

/// [`build`] with the secrets given (tests, hosts with a secret manager).
///
/// # Errors
/// As [`build`].
pub async fn build_with_secrets(
    platforms: &Platforms,
    connection: &ConnectionConfig,
    secrets: &Secrets,
    store: &Arc<dyn StateStore>,
) -> Result<Arc<dyn Connector>> {
    build_parts(platforms, connection, secrets, store)
        .await
        .map(|b| b.connector)
}

/// A connection built by [`build_parts`]: its connector and, when it authenticates through
/// OAuth, its token manager (for hosts that hand out access tokens or finish a code exchange
/// themselves, such as the Python bindings).
#[derive(Clone)]
#[non_exhaustive]
pub struct BuiltConnection {
    /// The connector.
    pub connector: Arc<dyn Connector>,
    /// The OAuth token manager the connector uses, if it uses one.
    pub tokens: Option<Arc<TokenManager>>,
}

impl std::fmt::Debug for BuiltConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltConnection")
            .field("connector", &self.connector.info().name)
            .field("oauth", &self.tokens.is_some())
            .finish()
    }
}

/// [`build_with_secrets`], keeping the token manager.
///
/// # Errors
/// As [`build`].
pub async fn build_parts(
    platforms: &Platforms,
    connection: &ConnectionConfig,
    secrets: &Secrets,
    store: &Arc<dyn StateStore>,
) -> Result<BuiltConnection> {
    let (platform, settings) = check(platforms, connection)?;
    let id = ConnectionId::from(connection.id.clone());
    let with = |e: Error| e.with_context("connection", &connection.id);
    let tokens: Arc<dyn TokenStore> = store.clone();
    let stored = if settings.auth().map_err(with)?.client_id.is_some() {
        tokens_stored(tokens.as_ref(), &id).await
    } else {
        false
    };
    let hook_store: Arc<dyn StateStore> = store.clone();
    let platform_name = platform.name();
    let inputs = AuthInputs::new(&id, secrets, tokens)
        .tokens_stored(stored)
        .on_reauth_needed(Arc::new(move |id: &ConnectionId| {
            let (store, id) = (hook_store.clone(), id.clone());
            // The hook is synchronous; the status write runs beside the failing request.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = mark_needs_reauth(store.as_ref(), &id, platform_name).await {
                        tracing::warn!(connection = %id, error = %e,
                            "cannot mark the connection as needing re-authorization");
                    }
                });
            }
        }));
    let auth = resolve_auth(platform.as_ref(), &settings, inputs).map_err(with)?;
    let tokens = match &auth {
        ConnectionAuth::OAuth(m) => Some(m.clone()),
        _ => None,
    };
    let ctx = BuildContext::new(&id, &settings, secrets, auth)
        .with_base_url(connection.base_url.as_deref())
        .with_streams(&connection.streams);
    let connector = platform.build(&ctx).map_err(with)?;
    Ok(BuiltConnection { connector, tokens })
}

/// The names of the static credentials a platform reads ([`SecretKind::Credential`]), for
/// help texts.
pub fn credential_names(platform: &dyn Platform) -> Vec<&'static str> {
    platform
        .secrets()
        .iter()
        .filter(|s| s.kind == SecretKind::Credential)
        .map(|s| s.name)
        .collect()
}

/// The status detail of a connection whose OAuth grant is gone.
pub fn reauth_detail(platform: &str, connection: &str) -> String {
    format!(
        "the OAuth grant was revoked or has expired: run `apex-connect connect {platform} \
         --connection {connection}`"
    )
}

/// Marks a connection `NeedsReauth` in the store, with [`reauth_detail`] (what the token
/// managers of [`build`] do when the grant is gone).
///
/// # Errors
/// `Storage`, or `NotFound` for a connection the store does not know.
pub async fn mark_needs_reauth(
    store: &dyn ConnectionStore,
    connection: &ConnectionId,
    platform: &str,
) -> Result<()> {
    tracing::warn!(connection = %connection, "connection needs re-authorization");
    store
        .set_connection_status(
            connection,
            ConnectionStatus::NeedsReauth,
            Some(&reauth_detail(platform, connection.as_str())),
        )
        .await
}

/// Stores tokens from an authorization for `connection` (encrypted by the store), replacing
/// any held; a connection that needed re-authorization is active again.
///
/// # Errors
/// `Storage`; `Conflict` if another process stored tokens at the same moment.
pub async fn store_tokens(
    store: &Arc<dyn StateStore>,
    connection: &ConnectionId,
    tokens: &apex_connect_core::TokenSet,
) -> Result<()> {
    let id = connection.clone();
    let expected = apex_connect_core::TokenStore::load(store.as_ref(), &id)
        .await
        .ok()
        .flatten()
        .map(|v| v.version);
    store.save(&id, tokens, expected).await?;
    // A connection that needed re-authorization is active again.
    if let Some(c) = store.get_connection(&id).await?
        && c.status == ConnectionStatus::NeedsReauth
    {
        store
            .set_connection_status(&id, ConnectionStatus::Active, None)
            .await?;
    }
    Ok(())
}
