//! Salesforce's error bodies (a JSON array of `{message, errorCode, fields}`) and how they map
//! to core [`ErrorKind`]s.

use std::fmt;
use std::time::Duration;

use apex_connect_core::{Error, ErrorKind};
use serde::Deserialize;

use crate::NAME;

/// How long a `REQUEST_LIMIT_EXCEEDED` asks to wait before trying again. The allocation is a
/// rolling 24 hours, so nothing frees up soon: the error is permanent for this run and hints
/// at an hour.
pub const REQUEST_LIMIT_BACKOFF: Duration = Duration::from_secs(3600);

/// Longest text kept from a body field, so a huge error page cannot bloat messages.
const MAX_FIELD: usize = 500;
/// Most error items kept from one body.
const MAX_ITEMS: usize = 20;
/// Most field names kept per error item.
const MAX_FIELDS: usize = 50;

/// One item of a Salesforce error array.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SalesforceErrorItem {
    /// The error code (`INVALID_SESSION_ID`, `REQUEST_LIMIT_EXCEEDED`, `QUERY_TIMEOUT`, ...);
    /// sObject Collections results call it `statusCode`.
    pub error_code: String,
    /// The human-readable message.
    pub message: String,
    /// The fields the error is about, when any.
    pub fields: Vec<String>,
}

/// An error as Salesforce reports it: the HTTP status and the body's error items.
///
/// Reachable from a core [`Error`] through [`Error::downcast_source`].
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct SalesforceApiError {
    /// The HTTP status (0 for per-record results of a collection call).
    pub status: u16,
    /// The error items (at least one when parsed from a body).
    pub errors: Vec<SalesforceErrorItem>,
}

impl fmt::Display for SalesforceApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Salesforce API error")?;
        if self.status != 0 {
            write!(f, " {}", self.status)?;
        }
        for (i, e) in self.errors.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{}: {}", e.error_code, e.message)?;
            if !e.fields.is_empty() {
                write!(f, " [{}]", e.fields.join(", "))?;
            }
        }
        Ok(())
    }
}

/// Lenient view of one error item: every field optional and of any type.
#[derive(Deserialize, Default)]
struct RawItem {
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default, alias = "statusCode")]
    #[serde(rename = "errorCode")]
    error_code: Option<serde_json::Value>,
    #[serde(default)]
    fields: Option<serde_json::Value>,
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => clip(s),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => clip(&other.to_string()),
    }
}

impl SalesforceErrorItem {
    fn from_raw(raw: &RawItem) -> Self {
        let fields = match &raw.fields {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .take(MAX_FIELDS)
                .map(|v| text(Some(v)))
                .collect(),
            Some(serde_json::Value::String(s)) => vec![clip(s)],
            _ => Vec::new(),
        };
        SalesforceErrorItem {
            error_code: text(raw.error_code.as_ref()),
            message: text(raw.message.as_ref()),
            fields,
        }
    }

    /// Parses the `errors` of one collection result (`[{statusCode, message, fields}]`).
    pub fn parse_list(value: &serde_json::Value) -> Vec<SalesforceErrorItem> {
        match value {
            serde_json::Value::Array(items) => items
                .iter()
                .take(MAX_ITEMS)
                .filter_map(|v| serde_json::from_value::<RawItem>(v.clone()).ok())
                .map(|r| SalesforceErrorItem::from_raw(&r))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl SalesforceApiError {
    /// Parses an error body: a JSON array of error objects (or one object). `None` when the
    /// body is neither.
    pub fn parse(status: u16, body: &[u8]) -> Option<SalesforceApiError> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let raws: Vec<RawItem> = match v {
            serde_json::Value::Array(items) => items
                .into_iter()
                .take(MAX_ITEMS)
                .filter_map(|i| serde_json::from_value(i).ok())
                .collect(),
            obj @ serde_json::Value::Object(_) => {
                vec![serde_json::from_value(obj).ok()?]
            }
            _ => return None,
        };
        let errors: Vec<SalesforceErrorItem> = raws
            .iter()
            .map(SalesforceErrorItem::from_raw)
            .filter(|e| !e.error_code.is_empty() || !e.message.is_empty())
            .collect();
        if errors.is_empty() {
            return None;
        }
        Some(SalesforceApiError { status, errors })
    }

    /// Whether any item has `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.errors.iter().any(|e| e.error_code == code)
    }

    /// The first item's code.
    pub fn code(&self) -> Option<&str> {
        self.errors.first().map(|e| e.error_code.as_str())
    }
}

/// The core kind (and whether retrying may help) for an error `code` with HTTP `status`.
pub fn kind_for(code: &str, status: u16) -> (ErrorKind, bool) {
    match code {
        "INVALID_SESSION_ID" => (ErrorKind::Unauthenticated, false),
        "REQUEST_LIMIT_EXCEEDED" => (ErrorKind::RateLimited, false),
        "QUERY_TIMEOUT" => (ErrorKind::Upstream, false),
        "SERVER_UNAVAILABLE" => (ErrorKind::Upstream, true),
        "UNABLE_TO_LOCK_ROW" => (ErrorKind::Conflict, true),
        "INVALID_QUERY_LOCATOR"
        | "INVALID_FIELD"
        | "MALFORMED_QUERY"
        | "INVALID_TYPE"
        | "INVALID_TYPE_FOR_OPERATION"
        | "MALFORMED_ID"
        | "INVALID_ID_FIELD"
        | "INVALID_FIELD_FOR_INSERT_UPDATE"
        | "REQUIRED_FIELD_MISSING"
        | "STRING_TOO_LONG"
        | "DUPLICATE_VALUE"
        | "FIELD_CUSTOM_VALIDATION_EXCEPTION"
        | "INVALID_CROSS_REFERENCE_KEY"
        | "JSON_PARSER_ERROR"
        | "INVALID_OPERATION"
        | "INVALID_REPLICATION_DATE"
        | "EXCEEDED_ID_LIMIT" => (ErrorKind::InvalidInput, false),
        "INSUFFICIENT_ACCESS"
        | "INSUFFICIENT_ACCESS_OR_READONLY"
        | "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE_ENTITY"
        | "API_DISABLED_FOR_ORG"
        | "API_CURRENTLY_DISABLED"
        | "FUNCTIONALITY_NOT_ENABLED" => (ErrorKind::PermissionDenied, false),
        "NOT_FOUND" | "ENTITY_IS_DELETED" => (ErrorKind::NotFound, false),
        "TXN_SECURITY_METERING_ERROR" => (ErrorKind::Config, false),
        _ => kind_for_status(status),
    }
}

/// The core kind for an HTTP `status` from Salesforce (no known error code).
pub fn kind_for_status(status: u16) -> (ErrorKind, bool) {
    match status {
        401 => (ErrorKind::Unauthenticated, false),
        403 => (ErrorKind::PermissionDenied, false),
        404 | 410 => (ErrorKind::NotFound, false),
        409 | 412 => (ErrorKind::Conflict, false),
        429 => (ErrorKind::RateLimited, true),
        300 | 400 | 405 | 415 | 422 => (ErrorKind::InvalidInput, false),
        408 => (ErrorKind::Upstream, true),
        s if s >= 500 => (ErrorKind::Upstream, true),
        _ => (ErrorKind::Upstream, false),
    }
}

/// The core error for a non-2xx answer with `status` and `body`; `hint` is a `Retry-After`.
/// The parsed [`SalesforceApiError`] is the source; its first code is context `error_code`.
pub fn error_for_response(status: u16, body: &[u8], hint: Option<Duration>) -> Error {
    let parsed = SalesforceApiError::parse(status, body);
    let code = parsed.as_ref().and_then(|p| p.code()).unwrap_or("");
    let (kind, temporary) = kind_for(code, status);
    let message = match &parsed {
        Some(p) => {
            let first = &p.errors[0];
            format!("Salesforce: {} {}", first.error_code, first.message)
                .trim()
                .to_string()
        }
        None => format!("Salesforce answered HTTP {status}"),
    };
    let mut err = Error::new(kind, message).with_context("connector", NAME);
    err = if temporary {
        err.temporary()
    } else {
        err.permanent()
    };
    if !code.is_empty() {
        err = err.with_context("error_code", code);
    }
    if code == "REQUEST_LIMIT_EXCEEDED" {
        err = err.with_retry_after(
            hint.unwrap_or(REQUEST_LIMIT_BACKOFF)
                .max(REQUEST_LIMIT_BACKOFF),
        );
    } else if let Some(h) = hint {
        err = err.with_retry_after(h);
    }
    match parsed {
        Some(p) => err.set_source(p),
        None => err,
    }
}

/// The [`SalesforceApiError`] behind a core error, anywhere in its source chain.
pub fn api_error(err: &Error) -> Option<&SalesforceApiError> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = src {
        if let Some(e) = s.downcast_ref::<SalesforceApiError>() {
            return Some(e);
        }
        src = s.source();
    }
    None
}

/// The Salesforce error code of a core error (from its source chain, else its `error_code`
/// context), if it has one.
pub fn error_code(err: &Error) -> Option<&str> {
    api_error(err)
        .and_then(|p| p.code())
        .or_else(|| err.context_value("error_code"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_array() {
        let body =
            br#"[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]"#;
        let e = SalesforceApiError::parse(401, body).unwrap();
        assert_eq!(e.code(), Some("INVALID_SESSION_ID"));
        let err = error_for_response(401, body, None);
        assert_eq!(err.kind(), ErrorKind::Unauthenticated);
        assert_eq!(error_code(&err), Some("INVALID_SESSION_ID"));
        assert!(err.to_string().contains("Session expired"));
    }

    #[test]
    fn request_limit_is_permanent_with_a_long_hint() {
        let body = br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        let err = error_for_response(403, body, Some(Duration::from_secs(5)));
        assert_eq!(err.kind(), ErrorKind::RateLimited);
        assert!(!err.is_temporary());
        assert_eq!(err.retry_after(), Some(REQUEST_LIMIT_BACKOFF));
    }

    #[test]
    fn fields_and_hostile_shapes() {
        let body = br#"[{"message":"No such column 'Foo__c'","errorCode":"INVALID_FIELD","fields":["Foo__c",7]}]"#;
        let e = SalesforceApiError::parse(400, body).unwrap();
        assert_eq!(e.errors[0].fields, vec!["Foo__c", "7"]);
        assert!(SalesforceApiError::parse(400, b"[]").is_none());
        assert!(SalesforceApiError::parse(400, b"<html>").is_none());
        assert!(SalesforceApiError::parse(400, b"[1, null, \"x\"]").is_none());
        let one = SalesforceApiError::parse(400, br#"{"errorCode":7,"message":null}"#).unwrap();
        assert_eq!(one.code(), Some("7"));
        let err = error_for_response(502, b"bad gateway", None);
        assert_eq!(err.kind(), ErrorKind::Upstream);
        assert!(err.is_temporary());
    }
}
