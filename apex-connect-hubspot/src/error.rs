//! HubSpot's error bodies and their mapping to [`ErrorKind`].

use std::time::Duration;

use apex_connect_core::{Error, ErrorKind};
use serde::Deserialize;
use serde_json::Value;

/// An error HubSpot reported, as its body says (`{status, message, correlationId, category,
/// subCategory, policyName, errors}`). Kept as the [`source`](std::error::Error::source) of
/// the core [`Error`]; reach it with [`Error::downcast_source`].
#[derive(Debug, Clone, PartialEq, Eq, Default, thiserror::Error)]
#[error("HubSpot {status}: {category}: {message}")]
#[non_exhaustive]
pub struct HubSpotApiError {
    /// HTTP status (0 for an error inside a 207 answer).
    pub status: u16,
    /// `category` (`VALIDATION_ERROR`, `OBJECT_NOT_FOUND`, `RATE_LIMITS`...), or empty.
    pub category: String,
    /// `subCategory`, if any.
    pub sub_category: Option<String>,
    /// The message (short, never a credential).
    pub message: String,
    /// `correlationId`, to quote to HubSpot support.
    pub correlation_id: Option<String>,
    /// `policyName` of a 429 (`DAILY`, `TEN_SECONDLY_ROLLING`, `SECONDLY`).
    pub policy_name: Option<String>,
    /// Ids named in `context.ids` (batch errors).
    pub ids: Vec<String>,
    /// `context.objectWriteTraceId`, when the error names one (batch errors).
    pub trace_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    sub_category: Option<Value>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    policy_name: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    context: Option<Value>,
}

const MAX_MESSAGE: usize = 300;

impl HubSpotApiError {
    /// Parses an error body (also an entry of a batch answer's `errors[]`); `None` when it is
    /// not HubSpot's shape.
    pub fn parse(status: u16, body: &[u8]) -> Option<HubSpotApiError> {
        let v: Value = serde_json::from_slice(body).ok()?;
        Self::from_value(status, &v)
    }

    /// As [`HubSpotApiError::parse`], from a parsed value.
    pub fn from_value(status: u16, v: &Value) -> Option<HubSpotApiError> {
        let b: Body = serde_json::from_value(v.clone()).ok()?;
        if b.message.is_none() && b.category.is_none() {
            return None;
        }
        let mut message: String = b.message.unwrap_or_default();
        if message.chars().count() > MAX_MESSAGE {
            message = message.chars().take(MAX_MESSAGE).collect::<String>() + "…";
        }
        let strings = |key: &str| -> Vec<String> {
            match b.context.as_ref().and_then(|c| c.get(key)) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| match x {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        };
        Some(HubSpotApiError {
            status,
            category: b
                .category
                .or_else(|| b.error_type.clone())
                .unwrap_or_default(),
            sub_category: b.sub_category.map(|s| match s {
                Value::String(s) => s,
                other => other.to_string(),
            }),
            message,
            correlation_id: b.correlation_id,
            policy_name: b.policy_name,
            ids: strings("ids"),
            trace_ids: strings("objectWriteTraceId"),
        })
    }

    /// The kind of error this is, from the category (and the status when the category is
    /// unknown).
    pub fn kind(&self) -> ErrorKind {
        match self.category.as_str() {
            "VALIDATION_ERROR" | "INVALID_PARAMS" | "PROPERTY_DOESNT_EXIST" => {
                ErrorKind::InvalidInput
            }
            "OBJECT_NOT_FOUND" | "RESOURCE_NOT_FOUND" => ErrorKind::NotFound,
            "CONFLICT" | "OBJECT_ALREADY_EXISTS" => ErrorKind::Conflict,
            "RATE_LIMIT" | "RATE_LIMITS" => ErrorKind::RateLimited,
            "INVALID_AUTHENTICATION" | "EXPIRED_AUTHENTICATION" => ErrorKind::Unauthenticated,
            "MISSING_SCOPES" | "FORBIDDEN" => ErrorKind::PermissionDenied,
            _ => match self.status {
                401 => ErrorKind::Unauthenticated,
                403 => ErrorKind::PermissionDenied,
                404 | 410 => ErrorKind::NotFound,
                409 | 412 => ErrorKind::Conflict,
                400 | 422 => ErrorKind::InvalidInput,
                429 => ErrorKind::RateLimited,
                _ => ErrorKind::Upstream,
            },
        }
    }

    /// The wait a 429 of this policy calls for: a day's remainder (until the next UTC
    /// midnight, the earliest the account's midnight can be... roughly) for `DAILY`, 10 s for
    /// the rolling ten-second window, 1 s for the search API's secondly limit.
    pub fn rate_limit_wait(&self, now_ms: i64) -> Option<Duration> {
        let policy = self.policy_name.as_deref().unwrap_or("");
        if policy == "DAILY" || self.message.contains("daily limit") {
            let day = 86_400_000;
            let left = day - now_ms.rem_euclid(day);
            return Some(Duration::from_millis(left.max(1000) as u64));
        }
        if policy.contains("SECONDLY_ROLLING") || policy.contains("TEN_SECONDLY") {
            return Some(Duration::from_secs(10));
        }
        if policy == "SECONDLY" || self.message.contains("secondly limit") {
            return Some(Duration::from_secs(1));
        }
        (self.kind() == ErrorKind::RateLimited).then_some(Duration::from_secs(10))
    }

    /// The core [`Error`] for this API error, with this as its source.
    pub fn into_error(self) -> Error {
        let kind = self.kind();
        let msg = if self.message.is_empty() {
            format!("HubSpot answered {} {}", self.status, self.category)
        } else {
            format!("HubSpot: {}", self.message)
        };
        let mut e = Error::new(kind, msg).with_context("connector", crate::NAME);
        if !self.category.is_empty() {
            e = e.with_context("category", &self.category);
        }
        if let Some(c) = &self.correlation_id {
            e = e.with_context("correlation_id", c);
        }
        if let Some(p) = &self.policy_name {
            e = e.with_context("policy", p);
        }
        e.set_source(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_shapes() {
        let body = br#"{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT",
            "correlationId":"c033cdaa-2c40-4a64-ae48-b4cec88dad24","policyName":"DAILY","requestId":"3d3e"}"#;
        let e = HubSpotApiError::parse(429, body).unwrap();
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.policy_name.as_deref(), Some("DAILY"));
        let w = e.rate_limit_wait(86_400_000 * 3 + 1000).unwrap();
        assert_eq!(w, Duration::from_millis(86_399_000));
        let body =
            br#"{"status":"error","message":"Property values were not valid","correlationId":"x",
            "category":"VALIDATION_ERROR","context":{"ids":["1","2"]}}"#;
        let e = HubSpotApiError::parse(400, body).unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert_eq!(e.ids, vec!["1", "2"]);
        let err = e.into_error();
        assert_eq!(err.context_value("correlation_id"), Some("x"));
        assert!(err.downcast_source::<HubSpotApiError>().is_some());
        assert!(HubSpotApiError::parse(500, b"<html>").is_none());
    }
}
