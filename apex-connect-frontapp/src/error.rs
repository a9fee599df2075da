//! Front's error bodies (`_error`) and how they map to core [`ErrorKind`]s.

use std::fmt;
use std::time::Duration;

use apex_connect_core::{Error, ErrorKind};
use serde::Deserialize;

use crate::NAME;

/// An error as Front reports it in a response body: `{"_error": {"status", "title",
/// "message", "details"}}`. Front's docs also call `_error` "an array of error objects", so
/// both shapes are read; the first element of an array is kept.
///
/// Reachable from a core [`Error`] through [`Error::downcast_source`].
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct FrontApiError {
    /// The HTTP status the body names (or the response's status when the body has none).
    pub status: u16,
    /// A short title (`"Not found"`).
    pub title: Option<String>,
    /// A longer message.
    pub message: Option<String>,
    /// Further details, one string each.
    pub details: Vec<String>,
}

impl fmt::Display for FrontApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Front API error {}", self.status)?;
        if let Some(t) = &self.title {
            write!(f, ": {t}")?;
        }
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        if !self.details.is_empty() {
            write!(f, " [{}]", self.details.join("; "))?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "_error")]
    error: OneOrMany,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(RawError),
    Many(Vec<RawError>),
}

#[derive(Deserialize, Default)]
struct RawError {
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Option<serde_json::Value>,
}

/// Longest text kept from a body field, so a huge error page cannot bloat messages.
const MAX_FIELD: usize = 500;

fn clip(s: String) -> String {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl FrontApiError {
    /// Parses an `_error` body; `None` when `body` is not one.
    pub fn parse(status: u16, body: &[u8]) -> Option<FrontApiError> {
        let env: Envelope = serde_json::from_slice(body).ok()?;
        let raw = match env.error {
            OneOrMany::One(e) => e,
            OneOrMany::Many(v) => v.into_iter().next().unwrap_or_default(),
        };
        let details = match raw.details {
            Some(serde_json::Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) => clip(s),
                    other => clip(other.to_string()),
                })
                .collect(),
            Some(serde_json::Value::String(s)) => vec![clip(s)],
            _ => Vec::new(),
        };
        Some(FrontApiError {
            status: raw.status.unwrap_or(status),
            title: raw.title.map(clip),
            message: raw.message.map(clip),
            details,
        })
    }

    /// The core error kind for an HTTP `status` from Front.
    pub fn kind_for_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Unauthenticated,
            403 => ErrorKind::PermissionDenied,
            404 | 410 => ErrorKind::NotFound,
            409 | 412 => ErrorKind::Conflict,
            429 => ErrorKind::RateLimited,
            400 | 405 | 413 | 415 | 422 => ErrorKind::InvalidInput,
            s if s >= 500 => ErrorKind::Upstream,
            _ => ErrorKind::Upstream,
        }
    }
}

/// Builds the core error for a non-2xx Front response: kind from the status, message from
/// the `_error` title/message when the body has one, the parsed [`FrontApiError`] as source.
/// `retry_after` is attached to 429s. Never includes headers or the request's query string.
pub fn error_for_response(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
    let kind = FrontApiError::kind_for_status(status);
    let api = FrontApiError::parse(status, body).unwrap_or_else(|| FrontApiError {
        status,
        ..Default::default()
    });
    let message = match (&api.title, &api.message) {
        (Some(t), Some(m)) => format!("Front: {t}: {m}"),
        (Some(t), None) => format!("Front: {t}"),
        (None, Some(m)) => format!("Front: {m}"),
        (None, None) => format!("Front answered HTTP {status}"),
    };
    let mut err = Error::new(kind, message)
        .with_context("connector", NAME)
        .with_context("status", status);
    if status == 429 {
        err = err.temporary();
        if let Some(ra) = retry_after {
            err = err.with_retry_after(ra);
        }
    } else if status >= 500 {
        err = err.temporary();
    } else {
        err = err.permanent();
    }
    err.set_source(api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_object_and_array_bodies() {
        let obj = br#"{"_error":{"status":404,"title":"Not found","message":"Unknown conversation","details":["cnv_1"]}}"#;
        let e = FrontApiError::parse(404, obj).unwrap();
        assert_eq!(e.status, 404);
        assert_eq!(e.title.as_deref(), Some("Not found"));
        assert_eq!(e.details, vec!["cnv_1".to_string()]);

        let arr =
            br#"{"_error":[{"status":400,"title":"Bad request","message":"tag_ids is required"}]}"#;
        let e = FrontApiError::parse(422, arr).unwrap();
        assert_eq!(e.status, 400);
        assert_eq!(e.message.as_deref(), Some("tag_ids is required"));

        assert!(FrontApiError::parse(500, b"<html>oops</html>").is_none());
        assert!(FrontApiError::parse(500, br#"{"other":1}"#).is_none());
    }

    #[test]
    fn maps_statuses_to_kinds() {
        let e = error_for_response(
            404,
            br#"{"_error":{"status":404,"title":"Not found"}}"#,
            None,
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("Not found"));
        assert_eq!(e.downcast_source::<FrontApiError>().unwrap().status, 404);

        let e = error_for_response(
            400,
            br#"{"_error":{"status":400,"title":"Bad request"}}"#,
            None,
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);

        let e = error_for_response(429, b"", Some(Duration::from_secs(3)));
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.is_temporary());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));

        let e = error_for_response(503, b"", None);
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.is_temporary());
        assert_eq!(
            error_for_response(401, b"", None).kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            error_for_response(403, b"", None).kind(),
            ErrorKind::PermissionDenied
        );
    }
}
