//! Authorization server metadata: RFC 8414 (`/.well-known/oauth-authorization-server`) and
//! OpenID Connect discovery (`/.well-known/openid-configuration`).

use std::net::IpAddr;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use super::client::default_http_client;
use super::config::{ClientAuth, OAuthConfig};
use crate::error::{Error, ErrorKind, Result, redact_url};

/// The largest metadata document read (real ones are a few kilobytes).
const MAX_METADATA_BYTES: usize = 1024 * 1024;

const RFC8414_SUFFIX: &str = "/.well-known/oauth-authorization-server";
const OIDC_SUFFIX: &str = "/.well-known/openid-configuration";

/// What an authorization server publishes about itself (RFC 8414 §2; OpenID Connect
/// Discovery 1.0 §3 uses the same names). Only the fields a client of this crate uses are kept.
///
/// Made by [`ProviderMetadata::discover`] or [`ProviderMetadata::from_json`], which check
/// that the document names the issuer it was fetched for and that every endpoint is `https`
/// (or `http` on a loopback host, for tests and local servers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProviderMetadata {
    /// The issuer identifier (an `https` URL without query or fragment).
    pub issuer: String,
    /// The authorization endpoint (absent for servers without the authorization-code flow).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// The token endpoint.
    pub token_endpoint: String,
    /// The revocation endpoint (RFC 7009), when the server has one.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// The scopes the server supports (informative: not all are requested).
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// How clients may authenticate at the token endpoint (`client_secret_basic`,
    /// `client_secret_post`, ...). Empty: `client_secret_basic` (the RFC's default).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// The grant types the server supports. Empty: not stated.
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    /// The PKCE methods the server supports (`S256`). Empty: not stated.
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

impl ProviderMetadata {
    /// The URLs where `issuer` publishes its metadata, in the order they are tried: the RFC 8414
    /// one (the well-known segment inserted between host and path), then the OpenID Connect one
    /// (appended to the issuer).
    ///
    /// # Errors
    /// `Config` when `issuer` is not an `https` URL (or `http` on loopback) without query and
    /// fragment.
    pub fn well_known_urls(issuer: &str) -> Result<Vec<Url>> {
        let url = parse_endpoint("issuer", issuer)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::config("an OAuth issuer has no query or fragment")
                .with_context("issuer", redact_url(issuer)));
        }
        let path = url.path().trim_end_matches('/');
        let mut rfc = url.clone();
        rfc.set_path(&format!("{RFC8414_SUFFIX}{path}"));
        let mut oidc = url.clone();
        oidc.set_path(&format!("{path}{OIDC_SUFFIX}"));
        Ok(vec![rfc, oidc])
    }

    /// Fetches the metadata of `issuer` (its identifier, e.g. `https://login.example.com`),
    /// trying the RFC 8414 URL then the OpenID Connect one (see
    /// [`ProviderMetadata::well_known_urls`]). A full well-known URL is accepted too; its
    /// issuer is then derived from it.
    ///
    /// Give it a client with timeouts and no redirects, such as
    /// [`super::default_http_client`].
    ///
    /// # Errors
    /// - `Config`: `issuer` or an endpoint in the document is not `https` (loopback `http`
    ///   excepted), or does not parse.
    /// - `NotFound`: neither URL has a document.
    /// - `InvalidResponse`: the document is not metadata JSON, is larger than 1 MiB, lacks
    ///   `token_endpoint`, or names another issuer.
    /// - `Network`, `Upstream` (5xx): temporary.
    pub async fn discover(http: &reqwest::Client, issuer: &str) -> Result<Self> {
        let (issuer, urls) = match issuer.find("/.well-known/") {
            Some(_) => {
                let url = parse_endpoint("metadata URL", issuer)?;
                (issuer_of_well_known(&url)?, vec![url])
            }
            None => (
                issuer.trim_end_matches('/').to_string(),
                Self::well_known_urls(issuer)?,
            ),
        };
        let mut last = None;
        for url in urls {
            match fetch(http, &url).await? {
                Some(body) => return Self::from_json(&body, &issuer),
                None => last = Some(url),
            }
        }
        Err(Error::new(
            ErrorKind::NotFound,
            "the OAuth server publishes no metadata document",
        )
        .with_context(
            "url",
            last.map_or_else(String::new, |u| redact_url(u.as_str())),
        ))
    }

    /// Parses a metadata document fetched for `expected_issuer` and checks it: the `issuer` it
    /// names equals `expected_issuer` (RFC 8414 §3.3; a trailing `/` is ignored on both), and
    /// every endpoint is `https` (loopback `http` excepted).
    ///
    /// # Errors
    /// As [`ProviderMetadata::discover`].
    pub fn from_json(body: &[u8], expected_issuer: &str) -> Result<Self> {
        let meta: ProviderMetadata = serde_json::from_slice(body).map_err(|e| {
            Error::invalid_response("the OAuth metadata document is not the JSON expected")
                .with_context("line", e.line())
                .with_context("column", e.column())
        })?;
        if meta.issuer.trim_end_matches('/') != expected_issuer.trim_end_matches('/') {
            return Err(Error::invalid_response(
                "the OAuth metadata document names another issuer",
            )
            .permanent()
            .with_context("expected", redact_url(expected_issuer))
            .with_context("issuer", redact_url(&meta.issuer)));
        }
        parse_endpoint("issuer", &meta.issuer)?;
        parse_endpoint("token_endpoint", &meta.token_endpoint)?;
        for (what, url) in [
            ("authorization_endpoint", &meta.authorization_endpoint),
            ("revocation_endpoint", &meta.revocation_endpoint),
        ] {
            if let Some(url) = url {
                parse_endpoint(what, url)?;
            }
        }
        Ok(meta)
    }

    /// The client authentication to use: `Basic` when the server accepts
    /// `client_secret_basic` (or states nothing), `RequestBody` when it accepts only
    /// `client_secret_post`.
    pub fn client_auth(&self) -> ClientAuth {
        let methods = &self.token_endpoint_auth_methods_supported;
        if !methods.is_empty()
            && !methods.iter().any(|m| m == "client_secret_basic")
            && methods.iter().any(|m| m == "client_secret_post")
        {
            ClientAuth::RequestBody
        } else {
            ClientAuth::Basic
        }
    }
}

impl OAuthConfig {
    /// A configuration for `client_id` from a server's metadata: its token, authorization and
    /// revocation endpoints and the client authentication it accepts
    /// ([`ProviderMetadata::client_auth`]). Scopes, secret and redirect URI are the host's
    /// to add (`with_scopes`, `with_client_secret`, `with_redirect_url`).
    pub fn from_metadata(client_id: impl Into<String>, metadata: &ProviderMetadata) -> Self {
        let mut c = OAuthConfig::new(client_id, metadata.token_endpoint.clone())
            .with_client_auth(metadata.client_auth());
        c.auth_url = metadata.authorization_endpoint.clone();
        c.revocation_url = metadata.revocation_endpoint.clone();
        c
    }

    /// [`ProviderMetadata::discover`] over [`super::default_http_client`], then
    /// [`OAuthConfig::from_metadata`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn run() -> apex_connect_core::Result<()> {
    /// use apex_connect_core::oauth::OAuthConfig;
    /// let config = OAuthConfig::discover("my-client-id", "https://login.example.com")
    ///     .await?
    ///     .with_client_secret("my-secret")
    ///     .with_redirect_url("https://example.com/callback");
    /// # let _ = config; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`ProviderMetadata::discover`].
    pub async fn discover(client_id: impl Into<String>, issuer: &str) -> Result<Self> {
        let http = default_http_client()?;
        let metadata = ProviderMetadata::discover(&http, issuer).await?;
        Ok(Self::from_metadata(client_id, &metadata))
    }
}

/// The issuer a well-known URL was built from (the inverse of `well_known_urls`).
fn issuer_of_well_known(url: &Url) -> Result<String> {
    let path = url.path();
    let issuer_path = if let Some(rest) = path.strip_prefix(RFC8414_SUFFIX) {
        rest.to_string()
    } else if let Some(prefix) = path.strip_suffix(OIDC_SUFFIX) {
        prefix.to_string()
    } else {
        return Err(Error::config(
            "not a metadata URL (`/.well-known/oauth-authorization-server` or \
             `/.well-known/openid-configuration`)",
        )
        .with_context("url", redact_url(url.as_str())));
    };
    let mut issuer = url.clone();
    issuer.set_path(&issuer_path);
    issuer.set_query(None);
    issuer.set_fragment(None);
    Ok(issuer.as_str().trim_end_matches('/').to_string())
}

/// Whether `url`'s host is loopback (`localhost`, 127.0.0.0/8, `::1`).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Parses an endpoint and requires `https` (or `http` on loopback).
fn parse_endpoint(what: &'static str, url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::config("an OAuth endpoint is not a URL")
            .with_context("field", what)
            .with_context("url", redact_url(url))
            .set_source(e)
    })?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback(&parsed) => Ok(parsed),
        _ => Err(
            Error::config("an OAuth endpoint must be https (http only on a loopback host)")
                .with_context("field", what)
                .with_context("url", redact_url(url)),
        ),
    }
}

/// The body of a `200` answer; `None` for `404`/`405`/`410` (no document there).
async fn fetch(http: &reqwest::Client, url: &Url) -> Result<Option<Vec<u8>>> {
    let network = |e: reqwest::Error| {
        Error::new(ErrorKind::Network, "OAuth metadata endpoint unreachable")
            .temporary()
            .with_context("url", redact_url(url.as_str()))
            .set_source(e.without_url())
    };
    let mut response = http
        .get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(network)?;
    let status = response.status();
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::GONE => {
            return Ok(None);
        }
        s => {
            let e = if s.is_server_error() {
                Error::new(ErrorKind::Upstream, "OAuth metadata endpoint failed").temporary()
            } else {
                Error::new(
                    ErrorKind::Upstream,
                    "OAuth metadata endpoint answered an error",
                )
                .permanent()
            };
            return Err(e
                .with_context("status", s.as_u16())
                .with_context("url", redact_url(url.as_str())));
        }
    }
    let too_large = || {
        Error::invalid_response("the OAuth metadata document is too large")
            .with_context("limit_bytes", MAX_METADATA_BYTES)
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_METADATA_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if body.len().saturating_add(chunk.len()) > MAX_METADATA_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn document(issuer: &str) -> serde_json::Value {
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "scopes_supported": ["openid", "crm.read"],
            "token_endpoint_auth_methods_supported": ["client_secret_post"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"]
        })
    }

    fn http() -> reqwest::Client {
        default_http_client().unwrap()
    }

    #[test]
    fn well_known_urls_follow_both_specs() {
        let urls = ProviderMetadata::well_known_urls("https://as.example.com/tenant1/").unwrap();
        assert_eq!(
            urls[0].as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server/tenant1"
        );
        assert_eq!(
            urls[1].as_str(),
            "https://as.example.com/tenant1/.well-known/openid-configuration"
        );
        let urls = ProviderMetadata::well_known_urls("https://as.example.com").unwrap();
        assert_eq!(
            urls[0].as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server"
        );
        for bad in [
            "http://as.example.com",
            "https://as.example.com/?x=1",
            "ftp://as.example.com",
            "not a url",
        ] {
            let e = ProviderMetadata::well_known_urls(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}: {e}");
        }
        assert!(ProviderMetadata::well_known_urls("http://127.0.0.1:8080").is_ok());
        assert!(ProviderMetadata::well_known_urls("http://localhost:8080").is_ok());
        assert!(ProviderMetadata::well_known_urls("http://[::1]:8080").is_ok());
    }

    #[tokio::test]
    async fn rfc8414_document_makes_a_config() {
        let server = MockServer::start().await;
        let issuer = server.uri();
        Mock::given(method("GET"))
            .and(path("/.well-known/oauth-authorization-server"))
            .respond_with(ResponseTemplate::new(200).set_body_json(document(&issuer)))
            .expect(2)
            .mount(&server)
            .await;
        let meta = ProviderMetadata::discover(&http(), &issuer).await.unwrap();
        assert_eq!(meta.token_endpoint, format!("{issuer}/token"));
        assert_eq!(meta.scopes_supported, ["openid", "crm.read"]);
        assert_eq!(meta.client_auth(), ClientAuth::RequestBody);
        let c = OAuthConfig::from_metadata("cid", &meta);
        assert_eq!(c.token_url, format!("{issuer}/token"));
        assert_eq!(c.auth_url, Some(format!("{issuer}/authorize")));
        assert_eq!(c.revocation_url, Some(format!("{issuer}/revoke")));
        assert_eq!(c.client_auth, ClientAuth::RequestBody);
        assert!(c.scopes.is_empty());
        let discovered = OAuthConfig::discover("cid", &issuer).await.unwrap();
        assert_eq!(discovered.token_url, c.token_url);
        assert_eq!(discovered.revocation_url, c.revocation_url);
    }

    #[tokio::test]
    async fn falls_back_to_openid_configuration_with_a_path() {
        let server = MockServer::start().await;
        let issuer = format!("{}/realms/acme", server.uri());
        Mock::given(method("GET"))
            .and(path("/.well-known/oauth-authorization-server/realms/acme"))
            .respond_with(ResponseTemplate::new(404))
            .expect(1)
            .mount(&server)
            .await;
        let mut doc = document(&issuer);
        doc.as_object_mut()
            .unwrap()
            .remove("token_endpoint_auth_methods_supported");
        Mock::given(method("GET"))
            .and(path("/realms/acme/.well-known/openid-configuration"))
            .respond_with(ResponseTemplate::new(200).set_body_json(doc))
            .expect(2)
            .mount(&server)
            .await;
        let meta = ProviderMetadata::discover(&http(), &issuer).await.unwrap();
        assert_eq!(meta.issuer, issuer);
        assert_eq!(meta.client_auth(), ClientAuth::Basic);
        // The well-known URL itself works too.
        let direct = format!("{issuer}/.well-known/openid-configuration");
        let meta2 = ProviderMetadata::discover(&http(), &direct).await.unwrap();
        assert_eq!(meta2, meta);
    }

    #[tokio::test]
    async fn refuses_other_issuers_plain_http_endpoints_and_junk() {
        let server = MockServer::start().await;
        let issuer = server.uri();
        let mut doc = document("https://evil.example.com");
        Mock::given(method("GET"))
            .and(path("/.well-known/oauth-authorization-server"))
            .respond_with(ResponseTemplate::new(200).set_body_json(doc.clone()))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let e = ProviderMetadata::discover(&http(), &issuer)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");

        doc["issuer"] = json!(issuer);
        doc["token_endpoint"] = json!("http://as.example.com/token");
        Mock::given(method("GET"))
            .and(path("/.well-known/oauth-authorization-server"))
            .respond_with(ResponseTemplate::new(200).set_body_json(doc.clone()))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let e = ProviderMetadata::discover(&http(), &issuer)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert_eq!(e.context_value("field"), Some("token_endpoint"));

        doc["token_endpoint"] = json!(format!("{issuer}/token"));
        doc["revocation_endpoint"] = json!("http://as.example.com/revoke");
        let e = ProviderMetadata::from_json(doc.to_string().as_bytes(), &issuer).unwrap_err();
        assert_eq!(e.context_value("field"), Some("revocation_endpoint"));

        let e = ProviderMetadata::from_json(br#"{"issuer":"x"}"#, "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        let e = ProviderMetadata::from_json(b"<html>", "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);

        Mock::given(method("GET"))
            .and(path("/.well-known/oauth-authorization-server"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let e = ProviderMetadata::discover(&http(), &issuer)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.is_temporary());

        let big = vec![b' '; MAX_METADATA_BYTES + 1];
        Mock::given(method("GET"))
            .and(path("/.well-known/oauth-authorization-server"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(big))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        let e = ProviderMetadata::discover(&http(), &issuer)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{e}");

        // Nothing anywhere: NotFound.
        let empty = MockServer::start().await;
        let e = ProviderMetadata::discover(&http(), &empty.uri())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    }
}
