//! The one error type every connector returns.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a host can act on.
///
/// Hosts branch on the kind, not on messages: `Unauthenticated` means "reconnect",
/// `RateLimited` means "later", `InvalidInput` means "fix the request".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The credentials are missing, expired beyond refresh, or revoked: the connection needs
    /// re-authorization (OAuth `invalid_grant`, a 401 that a refresh did not cure).
    Unauthenticated,
    /// The credentials are valid but lack a scope or permission (403).
    PermissionDenied,
    /// The object or endpoint does not exist (404).
    NotFound,
    /// The platform (or our own gate) refused for rate reasons; see [`Error::retry_after`].
    RateLimited,
    /// The request was rejected as invalid (400, 422), or input given to the SDK was invalid
    /// (a cursor from another connector or version, a bad record).
    InvalidInput,
    /// A write conflicted with a newer version, or a compare-and-swap lost the race.
    Conflict,
    /// The connector or stream does not support the operation.
    Unsupported,
    /// The configuration is incomplete or inconsistent.
    Config,
    /// The platform answered with an error of its own (5xx, or an unexpected status).
    Upstream,
    /// The platform answered with a body we could not understand (malformed JSON, a truncated
    /// body, a missing field), or a link that may not be followed.
    InvalidResponse,
    /// The network failed: connect error, reset, timeout.
    Network,
    /// The state store (SQLite, PostgreSQL, the host's own) failed.
    Storage,
    /// The operation was cancelled before it finished.
    Cancelled,
    /// Anything else; a bug report is welcome.
    Unexpected,
}

impl ErrorKind {
    /// A static name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Config => "config",
            ErrorKind::Upstream => "upstream",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Network => "network",
            ErrorKind::Storage => "storage",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unexpected => "unexpected",
        }
    }

    /// Whether errors of this kind are usually worth retrying (the default of
    /// [`Error::is_temporary`] when the error was built without an explicit flag).
    pub fn default_temporary(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Upstream | ErrorKind::Network
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error type of apex-connect.
///
/// It carries a [`ErrorKind`], a message, whether retrying may help ([`Error::is_temporary`]),
/// key/value context (connector, stream, operation, HTTP status...), an optional
/// `Retry-After`, and the underlying error as its [`source`](StdError::source).
///
/// Messages and context never contain tokens, secrets or signed URLs: constructors in this
/// crate strip query strings from URLs before they are recorded.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    temporary: bool,
    context: Vec<(&'static str, String)>,
    retry_after: Option<Duration>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`; temporary if the kind usually is.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            temporary: kind.default_temporary(),
            context: Vec::new(),
            retry_after: None,
            source: None,
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// How long the platform asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The context recorded so far, in insertion order.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The first context value recorded under `key`.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Marks the error as temporary (worth retrying).
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Marks the error as permanent (retrying will not help).
    pub fn permanent(mut self) -> Self {
        self.temporary = false;
        self
    }

    /// Adds a key/value pair of context. Never pass secrets here.
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Records how long the platform asked us to wait.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Sets the underlying error.
    pub fn set_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The underlying error downcast to `E`, if it is one (like sqlx's `DatabaseError`).
    pub fn downcast_source<E: StdError + 'static>(&self) -> Option<&E> {
        self.source.as_deref().and_then(|s| s.downcast_ref::<E>())
    }

    /// Shorthand for `Error::new(ErrorKind::Config, message)`.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Shorthand for `Error::new(ErrorKind::Unsupported, message)`.
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for `Error::new(ErrorKind::InvalidResponse, message)`.
    pub fn invalid_response(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidResponse, message)
    }

    /// Shorthand for `Error::new(ErrorKind::InvalidInput, message)`.
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for `Error::new(ErrorKind::Storage, message)`, temporary.
    pub fn storage(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Storage, message).temporary()
    }

    /// A JSON body that failed to parse, as `InvalidResponse` with the serde error as source.
    /// A body that ends early (a truncated transfer) is marked temporary.
    pub fn from_json(err: serde_json::Error, what: &'static str) -> Self {
        let truncated = err.is_eof();
        let e = Error::new(
            ErrorKind::InvalidResponse,
            if truncated {
                "response body ended early (truncated)"
            } else {
                "response body is not the JSON expected"
            },
        )
        .with_context("decoding", what)
        .set_source(err);
        if truncated { e.temporary() } else { e }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.message, self.kind)?;
        f.write_str(if self.temporary {
            ", temporary"
        } else {
            ", permanent"
        })?;
        f.write_str(")")?;
        if !self.context.is_empty() {
            f.write_str(" [")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}={v}")?;
            }
            f.write_str("]")?;
        }
        if let Some(ra) = self.retry_after {
            write!(f, " retry after {:.3}s", ra.as_secs_f64())?;
        }
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("message", &self.message)
            .field("temporary", &self.temporary);
        if !self.context.is_empty() {
            d.field("context", &self.context);
        }
        if let Some(ra) = self.retry_after {
            d.field("retry_after", &ra);
        }
        if let Some(src) = &self.source {
            d.field("source", src);
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// Removes the query string and fragment of a URL so it can appear in messages and logs
/// (query strings may carry credentials or signed parameters).
pub fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let mut s = url[..end].to_string();
    // Also drop any userinfo (`https://user:pass@host/`).
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            s = format!("{}{}", &s[..scheme_end + 3], &rest[at + 1..]);
        }
    }
    if end < url.len() {
        s.push_str("?…");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_kind_context_and_source() {
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::Upstream, "server failed")
            .with_context("status", 502)
            .set_source(io);
        let s = e.to_string();
        assert!(s.contains("server failed"), "{s}");
        assert!(s.contains("upstream"), "{s}");
        assert!(s.contains("status=502"), "{s}");
        assert!(s.contains("boom"), "{s}");
        assert!(e.is_temporary());
        assert!(StdError::source(&e).is_some());
        assert_eq!(e.context_value("status"), Some("502"));
    }

    #[test]
    fn truncated_json_is_temporary_invalid_response() {
        let err = serde_json::from_str::<serde_json::Value>("{\"a\": [1, 2").unwrap_err();
        let e = Error::from_json(err, "page");
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(e.is_temporary());
        let err = serde_json::from_str::<serde_json::Value>("{\"a\": nope}").unwrap_err();
        let e = Error::from_json(err, "page");
        assert!(!e.is_temporary());
    }

    #[test]
    fn redact_url_strips_query_and_userinfo() {
        assert_eq!(
            redact_url("https://u:p@api.example.com/x?token=abc"),
            "https://api.example.com/x?…"
        );
        assert_eq!(redact_url("https://a.b/c"), "https://a.b/c");
    }
}
