//! Google's error bodies and how they map to core [`ErrorKind`]s, and the quota windows.

use std::fmt;
use std::time::{Duration, SystemTime};

use apex_connect_core::http::{PlatformPolicy, RateState, retry_after, with_request_context};
use apex_connect_core::{Error, ErrorKind};
use chrono::{Days, TimeZone, Timelike};
use chrono_tz::Tz;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use url::Url;

use super::NAME;
use crate::days::{WallClock, system_to_utc};

/// Which property quota an error (or a quota answer) is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaKind {
    /// Tokens per day (refilled at midnight Pacific time).
    Day,
    /// Tokens per hour, tokens per project per hour, potentially thresholded requests per hour.
    Hour,
    /// Concurrent requests.
    Concurrent,
}

impl QuotaKind {
    /// `day`, `hour` or `concurrent`.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Day => "day",
            QuotaKind::Hour => "hour",
            QuotaKind::Concurrent => "concurrent",
        }
    }

    /// How long until this quota refills at `now`: the next midnight in Los Angeles for the
    /// day, the next full hour for hourly quotas (plus a minute of margin), 30 s for
    /// concurrent requests.
    pub fn refill_after(self, now: SystemTime) -> Duration {
        match self {
            QuotaKind::Day => until_pacific_midnight(now),
            QuotaKind::Hour => until_next_hour(now).saturating_add(Duration::from_secs(60)),
            QuotaKind::Concurrent => Duration::from_secs(30),
        }
    }
}

/// Time from `now` to the next full hour.
pub fn until_next_hour(now: SystemTime) -> Duration {
    let t = system_to_utc(now);
    let into = u64::from(t.minute()) * 60 + u64::from(t.second());
    Duration::from_secs(3600 - into.min(3599))
}

/// Time from `now` to the next midnight in `America/Los_Angeles` (when daily quotas refill).
pub fn until_pacific_midnight(now: SystemTime) -> Duration {
    let la = chrono_tz::America::Los_Angeles;
    let t = system_to_utc(now).with_timezone(&la);
    let next = t
        .date_naive()
        .checked_add_days(Days::new(1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .and_then(|d| la.from_local_datetime(&d).earliest());
    match next {
        Some(n) => (n.with_timezone(&Tz::UTC) - t.with_timezone(&Tz::UTC))
            .to_std()
            .unwrap_or(Duration::from_secs(3600)),
        None => Duration::from_secs(24 * 3600),
    }
}

/// An error as Google reports it: `{"error": {"code", "message", "status"}}`.
///
/// Reachable from a core [`Error`] through [`Error::downcast_source`].
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub struct Ga4ApiError {
    /// The HTTP status.
    pub status: u16,
    /// Google's status name (`RESOURCE_EXHAUSTED`, `PERMISSION_DENIED`, ...).
    pub code: Option<String>,
    /// The message, clipped.
    pub message: Option<String>,
}

impl fmt::Display for Ga4ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GA4 Data API error {}", self.status)?;
        if let Some(c) = &self.code {
            write!(f, " {c}")?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

fn clip(s: &str) -> String {
    const MAX: usize = 400;
    let s = s.trim();
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Ga4ApiError {
    /// Reads a Google error body.
    pub fn parse(status: u16, body: &[u8]) -> Ga4ApiError {
        #[derive(Deserialize)]
        struct Outer<'a> {
            #[serde(borrow)]
            error: Inner<'a>,
        }
        #[derive(Deserialize)]
        struct Inner<'a> {
            #[serde(borrow, default)]
            message: apex_connect_core::lenient::LenientStr<'a>,
            #[serde(borrow, default)]
            status: apex_connect_core::lenient::LenientStr<'a>,
        }
        match serde_json::from_slice::<Outer<'_>>(body) {
            Ok(o) => Ga4ApiError {
                status,
                code: o.error.status.non_empty().map(clip),
                message: o.error.message.non_empty().map(clip),
            },
            Err(_) => Ga4ApiError {
                status,
                code: None,
                message: std::str::from_utf8(body)
                    .ok()
                    .map(str::trim)
                    .filter(|t| !t.is_empty() && !t.starts_with('<'))
                    .map(clip),
            },
        }
    }

    /// The quota a `RESOURCE_EXHAUSTED` message is about.
    pub fn quota(&self) -> Option<QuotaKind> {
        if self.status != 429 && self.code.as_deref() != Some("RESOURCE_EXHAUSTED") {
            return None;
        }
        let m = self.message.as_deref().unwrap_or("").to_ascii_lowercase();
        Some(if m.contains("concurrent") {
            QuotaKind::Concurrent
        } else if m.contains("per day") || m.contains("daily") {
            QuotaKind::Day
        } else {
            QuotaKind::Hour
        })
    }
}

/// The error for a non-2xx answer of the Data API at `now`. A quota answer (429
/// `RESOURCE_EXHAUSTED`) is `RateLimited` with `retry_after` = when that quota refills and
/// context `quota` (`day`, `hour`, `concurrent`); a wait longer than the connection's maximum
/// wait then fails the request at once instead of retrying (a clear pause).
pub fn error_for_response(
    status: u16,
    body: &[u8],
    header_hint: Option<Duration>,
    now: SystemTime,
) -> Error {
    let api = Ga4ApiError::parse(status, body);
    let kind = match status {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        429 => ErrorKind::RateLimited,
        400 | 422 => ErrorKind::InvalidInput,
        _ => ErrorKind::Upstream,
    };
    let message = match (&api.code, &api.message) {
        (Some(c), Some(m)) => format!("GA4 Data API answered HTTP {status} {c}: {m}"),
        (None, Some(m)) => format!("GA4 Data API answered HTTP {status}: {m}"),
        (Some(c), None) => format!("GA4 Data API answered HTTP {status} {c}"),
        (None, None) => format!("GA4 Data API answered HTTP {status}"),
    };
    let mut err = Error::new(kind, message)
        .with_context("connector", NAME)
        .with_context("status", status);
    if status == 403 {
        err = err.with_context(
            "hint",
            "the service account's email (or the user) needs access to the GA4 property (Viewer)",
        );
    }
    if let Some(q) = api.quota() {
        let hint = header_hint.unwrap_or_else(|| q.refill_after(now));
        err = Error::new(ErrorKind::RateLimited, err.message().to_string())
            .with_context("connector", NAME)
            .with_context("status", status)
            .with_context("quota", q.as_str())
            .temporary()
            .with_retry_after(hint);
    } else if status >= 500 || status == 408 {
        err = err.temporary();
    } else if status == 429 {
        err = err
            .temporary()
            .with_retry_after(header_hint.unwrap_or(Duration::from_secs(30)));
    } else {
        err = err.permanent();
    }
    err.set_source(api)
}

/// The Data API's HTTP knowledge: Google error bodies and quota answers. The clock tells
/// when quotas refill.
#[derive(Clone)]
pub struct Ga4Policy {
    clock: WallClock,
}

impl fmt::Debug for Ga4Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ga4Policy")
    }
}

impl Ga4Policy {
    /// A policy reading the time from `clock`.
    pub fn new(clock: WallClock) -> Self {
        Ga4Policy { clock }
    }
}

impl PlatformPolicy for Ga4Policy {
    fn rate_state(&self, _headers: &HeaderMap) -> Option<RateState> {
        // Quotas come in the body (`propertyQuota`), read by the connector.
        None
    }

    /// GA4 answers a used-up quota with 429 and no `Retry-After`, naming the quota only in
    /// the body, which this hook does not see. It assumes the common case, an hourly quota:
    /// until the next full hour. So the retry layer does not hammer a closed quota (a wait
    /// longer than the maximum wait is not retried at all), and the rate gate closes for
    /// every request of the connection. The body's exact quota then sets the error's
    /// `retry_after` ([`error_for_response`]).
    fn retry_hint(&self, status: StatusCode, _headers: &HeaderMap) -> Option<Duration> {
        (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| QuotaKind::Hour.refill_after((self.clock)()))
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        method: &Method,
        url: &Url,
    ) -> Error {
        let now = (self.clock)();
        let hint = retry_after(headers, now);
        let e = error_for_response(status.as_u16(), body, hint, now);
        with_request_context(e, method, Some(status), url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: &str) -> SystemTime {
        let t = chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
        UNIX_EPOCH + Duration::from_secs(t as u64)
    }

    #[test]
    fn quota_windows() {
        assert_eq!(
            until_next_hour(at("2024-03-20T10:59:00Z")),
            Duration::from_secs(60)
        );
        assert_eq!(
            until_next_hour(at("2024-03-20T10:00:00Z")),
            Duration::from_secs(3600)
        );
        // 23:00 in Los Angeles (PDT, UTC-7) is 06:00 UTC: an hour to midnight.
        assert_eq!(
            until_pacific_midnight(at("2024-03-21T06:00:00Z")),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn quota_answers_are_clear_pauses() {
        let now = at("2024-03-20T10:30:00Z");
        let body = br#"{"error": {"code": 429, "message": "Exhausted property tokens per hour. Please retry in the next hour.", "status": "RESOURCE_EXHAUSTED"}}"#;
        let e = error_for_response(429, body, None, now);
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.context_value("quota"), Some("hour"));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(31 * 60)));
        let day = br#"{"error": {"code": 429, "message": "Exhausted property tokens per day.", "status": "RESOURCE_EXHAUSTED"}}"#;
        let e = error_for_response(429, day, None, now);
        assert_eq!(e.context_value("quota"), Some("day"));
        assert!(e.retry_after().unwrap() > Duration::from_secs(3600));
        let conc = br#"{"error": {"code": 429, "message": "Exhausted concurrent requests quota.", "status": "RESOURCE_EXHAUSTED"}}"#;
        let e = error_for_response(429, conc, None, now);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));

        let e = error_for_response(
            403,
            br#"{"error": {"code": 403, "message": "User does not have sufficient permissions for this property.", "status": "PERMISSION_DENIED"}}"#,
            None,
            now,
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.context_value("hint").is_some());
        assert_eq!(
            e.downcast_source::<Ga4ApiError>().unwrap().code.as_deref(),
            Some("PERMISSION_DENIED")
        );
        assert_eq!(
            error_for_response(400, br#"{"error":{"status":"INVALID_ARGUMENT","message":"Field x is not a valid dimension."}}"#, None, now).kind(),
            ErrorKind::InvalidInput
        );
        let e = error_for_response(503, b"<html>", None, now);
        assert!(e.is_temporary());
        assert!(!e.to_string().contains("html"));
    }
}
