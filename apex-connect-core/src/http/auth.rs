//! The auth middleware: a fresh `Authorization` per attempt, one refresh and retry on 401.

use std::sync::Arc;

use http::{Extensions, StatusCode, header::AUTHORIZATION};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use super::credentials::Credentials;
use super::hosts::HostAllowList;
use super::stats::HttpStats;

/// Sits inside the retry layer (each attempt asks for the current credential, so a token
/// refreshed meanwhile is used) and outside the rate gate (the repeat after a 401 pays the
/// gate like any attempt).
///
/// It attaches credentials only to requests for the connection's API origins (scheme,
/// host and port): a request for any other origin fails before a credential is asked for,
/// whichever way it reached the stack (helpers check links earlier; this also covers
/// [`super::HttpClient::middleware_client`]).
pub(crate) struct AuthMiddleware {
    pub(crate) credentials: Arc<dyn Credentials>,
    pub(crate) stats: HttpStats,
    pub(crate) hosts: HostAllowList,
}

#[async_trait::async_trait]
impl Middleware for AuthMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.hosts.check(req.url()).map_err(|e| {
            reqwest_middleware::Error::middleware(e.with_context("refused", "credentials"))
        })?;
        let mut value = self
            .credentials
            .authorization()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        value.set_sensitive(true);
        // Keep a copy for the one repeat after a refresh (not possible with a streamed body).
        let again = req.try_clone();
        req.headers_mut().insert(AUTHORIZATION, value.clone());
        let resp = next.clone().run(req, extensions).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let Some(mut again) = again else {
            return Ok(resp);
        };
        let refreshed = self
            .credentials
            .refresh_after_unauthorized(&value)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        if !refreshed {
            return Ok(resp);
        }
        self.stats.record_auth_refresh();
        let mut fresh = self
            .credentials
            .authorization()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        fresh.set_sensitive(true);
        drop(resp);
        again.headers_mut().insert(AUTHORIZATION, fresh);
        // A second 401 goes back as is: the caller's classifier makes it `Unauthenticated`.
        next.run(again, extensions).await
    }
}
