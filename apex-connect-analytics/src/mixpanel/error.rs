//! Mixpanel's error bodies and how they map to core [`ErrorKind`]s.

use std::fmt;
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{PlatformPolicy, retry_after, with_request_context};
use apex_connect_core::{Error, ErrorKind};
use http::{HeaderMap, Method, StatusCode};
use url::Url;

use super::NAME;

/// How long to wait after a 429 that names no time: Mixpanel sends no `Retry-After`; its
/// limits are 60 queries in any hour, so a slot frees up within a minute on average.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// An error as Mixpanel reports it: `{"error": "...", "request": "...", "status": "error"}`,
/// or plain text (the export host answers some errors as text).
///
/// Reachable from a core [`Error`] through [`Error::downcast_source`].
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct MixpanelApiError {
    /// The HTTP status.
    pub status: u16,
    /// The `error` text (or the body's first line), clipped.
    pub message: Option<String>,
}

impl fmt::Display for MixpanelApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mixpanel API error {}", self.status)?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// Longest text kept from a body.
const MAX_MESSAGE: usize = 300;

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl MixpanelApiError {
    /// Reads an error body (JSON with `error`, or text); `message` is `None` for an empty or
    /// binary body.
    pub fn parse(status: u16, body: &[u8]) -> MixpanelApiError {
        #[derive(serde::Deserialize)]
        struct Body<'a> {
            #[serde(borrow, default)]
            error: apex_connect_core::lenient::LenientStr<'a>,
        }
        let message = match serde_json::from_slice::<Body<'_>>(body) {
            Ok(b) => b.error.non_empty().map(clip),
            Err(_) => std::str::from_utf8(body)
                .ok()
                .and_then(|t| t.lines().map(str::trim).find(|l| !l.is_empty()))
                .filter(|t| !t.starts_with('<'))
                .map(clip),
        };
        MixpanelApiError { status, message }
    }

    /// The core kind for an HTTP status from Mixpanel (402: the plan lacks the API).
    pub fn kind_for_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Unauthenticated,
            402 | 403 => ErrorKind::PermissionDenied,
            404 | 410 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            429 => ErrorKind::RateLimited,
            400 | 413 | 422 => ErrorKind::InvalidInput,
            _ => ErrorKind::Upstream,
        }
    }
}

/// The error for a non-2xx Mixpanel response. 429s and 5xx are temporary; a 429 waits
/// `retry_after` (the header's, else [`DEFAULT_RETRY_AFTER`]). A 400 that names `to_date`
/// usually means the project's time zone is set wrong (its "today" is not yet ours): the error
/// says so.
pub fn error_for_response(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    let api = MixpanelApiError::parse(status, body);
    let kind = MixpanelApiError::kind_for_status(status);
    let message = match &api.message {
        Some(m) => format!("Mixpanel answered HTTP {status}: {m}"),
        None => format!("Mixpanel answered HTTP {status}"),
    };
    let mut err = Error::new(kind, message)
        .with_context("connector", NAME)
        .with_context("status", status);
    if status == 400
        && api
            .message
            .as_deref()
            .is_some_and(|m| m.contains("to_date"))
    {
        err = err.with_context(
            "hint",
            "check the project_timezone setting: projects created before 2023 count days in their own time zone",
        );
    }
    err = if status == 429 {
        err.temporary()
            .with_retry_after(retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
    } else if status >= 500 || status == 408 {
        err.temporary()
    } else {
        err.permanent()
    };
    err.set_source(api)
}

/// Mixpanel's HTTP knowledge: error bodies, 429s without `Retry-After`. The allowed hosts are
/// the region's two hosts, given to each client as its base URL (no others).
#[derive(Debug, Clone, Copy, Default)]
pub struct MixpanelPolicy;

impl PlatformPolicy for MixpanelPolicy {
    fn rate_state(&self, _headers: &HeaderMap) -> Option<apex_connect_core::http::RateState> {
        // Mixpanel sends no budget headers.
        None
    }

    fn retry_hint(&self, status: StatusCode, _headers: &HeaderMap) -> Option<Duration> {
        (status == StatusCode::TOO_MANY_REQUESTS).then_some(DEFAULT_RETRY_AFTER)
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        method: &Method,
        url: &Url,
    ) -> Error {
        let hint = retry_after(headers, SystemTime::now());
        let e = error_for_response(status.as_u16(), body, hint);
        with_request_context(e, method, Some(status), url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_statuses() {
        let e = error_for_response(
            429,
            br#"{"error": "Query rate limit exceeded for project_id: 12. 1/5 queries running concurrently and 61/60 queries running in the last hour", "status": "error"}"#,
            None,
        );
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(DEFAULT_RETRY_AFTER));
        assert!(e.to_string().contains("61/60"), "{e}");

        let e = error_for_response(429, b"", Some(Duration::from_secs(3)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));

        let e = error_for_response(
            400,
            br#"{"request": "/api/2.0/export", "error": "to_date cannot be later than today"}"#,
            None,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(!e.is_temporary());
        assert!(e.context_value("hint").is_some());
        assert_eq!(e.downcast_source::<MixpanelApiError>().unwrap().status, 400);

        let e = error_for_response(401, b"Unauthorized\n", None);
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("Unauthorized"));
        assert_eq!(
            error_for_response(402, b"{}", None).kind(),
            ErrorKind::PermissionDenied
        );
        let e = error_for_response(502, b"<html>bad gateway</html>", None);
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.is_temporary());
        assert!(!e.to_string().contains("html"));
        let long = "x".repeat(10_000);
        let e = error_for_response(500, long.as_bytes(), None);
        assert!(e.to_string().len() < 1_000);
    }
}
