//! Per-platform knowledge: rate headers, reset hints, error classification, API hosts.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, StatusCode, header};
use url::Url;

use crate::error::{Error, ErrorKind, redact_url};

/// The platform's view of the rate budget, read from a response's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// Requests allowed in the current window, if the platform says.
    pub limit: Option<u64>,
    /// Requests left in the current window.
    pub remaining: u64,
    /// Time until the window resets (relative to when the response was received).
    pub reset_after: Duration,
}

/// A rolling (sliding) window a platform enforces — at most `limit` requests in any span of
/// `interval` — as one answer reports it (HubSpot's `X-HubSpot-RateLimit-Max`,
/// `-Interval-Milliseconds` and `-Remaining`).
///
/// A gate made with [`RateGate::rolling`](super::RateGate::rolling) learns its limit and
/// interval from it, and accounts for requests it did not send itself when `remaining` is
/// lower than its own count says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateWindow {
    /// Requests allowed in any span of `interval`.
    pub limit: u64,
    /// The window's length.
    pub interval: Duration,
    /// Requests left in the window as the platform counted when it answered, if it says.
    pub remaining: Option<u64>,
}

impl RateWindow {
    /// A window of `limit` requests per `interval`.
    pub fn new(limit: u64, interval: Duration) -> Self {
        RateWindow {
            limit,
            interval,
            remaining: None,
        }
    }

    /// Sets what is left in the window.
    pub fn with_remaining(mut self, remaining: u64) -> Self {
        self.remaining = Some(remaining);
        self
    }
}

/// What a platform crate teaches the HTTP stack about its API.
///
/// Every method has a default that fits most JSON APIs; [`DefaultPolicy`] uses them all.
/// Platform crates override what differs (HubSpot's daily quota headers, Salesforce's error
/// arrays, Front's per-company hosts).
///
/// # Behavior
/// - `rate_state` reads the remaining budget and reset time; the rate gate pauses every
///   request through it when the budget reaches its reserve, until the reset.
/// - `retry_hint` returns how long to wait before retrying `status`, from the platform's own
///   reset headers; `Retry-After` is read by the stack itself and takes precedence.
/// - `classify` turns a non-2xx response into an [`Error`]: never includes headers, and the
///   body only when it is short text or JSON.
/// - `api_hosts` lists host patterns (exact, or `*.suffix`) on which links may be followed.
pub trait PlatformPolicy: fmt::Debug + Send + Sync {
    /// The rate budget the platform reports in `headers`. Default: [`x_ratelimit_state`].
    fn rate_state(&self, headers: &HeaderMap) -> Option<RateState> {
        x_ratelimit_state(headers, SystemTime::now())
    }

    /// The rolling window the platform enforces, as `headers` report it. A gate made with
    /// [`RateGate::rolling`](super::RateGate::rolling) learns its limit and interval from
    /// it. Default: none (platforms with fixed windows report them through
    /// [`rate_state`](PlatformPolicy::rate_state)).
    fn rate_window(&self, headers: &HeaderMap) -> Option<RateWindow> {
        let _ = headers;
        None
    }

    /// How long to wait before retrying a response with `status`, from platform headers.
    /// Default: for 429, the reset time of [`PlatformPolicy::rate_state`] when the budget is
    /// exhausted.
    fn retry_hint(&self, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.rate_state(headers)
                .filter(|s| s.remaining == 0)
                .map(|s| s.reset_after)
        } else {
            None
        }
    }

    /// The error for a non-2xx response. Default: [`classify_status`], with the retry hint
    /// taken from `Retry-After` or [`PlatformPolicy::retry_hint`].
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        method: &Method,
        url: &Url,
    ) -> Error {
        let hint =
            retry_after(headers, SystemTime::now()).or_else(|| self.retry_hint(status, headers));
        classify_status(status, headers, body, method, url, hint)
    }

    /// Host patterns the platform documents for its API, besides the base URL's host:
    /// exact hosts (`api.hubapi.com`) or wildcards (`*.api.frontapp.com`). Default: none.
    fn api_hosts(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The policy for a platform with no special needs: `x-ratelimit-*` headers, standard
/// status mapping, no extra hosts.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultPolicy;

impl PlatformPolicy for DefaultPolicy {}

/// The longest wait any hint from the network is read as: one day. A larger `Retry-After`
/// or reset is capped here (so adding it to an instant can never overflow); the HTTP stack
/// then compares it with the maximum wait (see [`RateGate::with_max_wait`](super::RateGate::with_max_wait))
/// and fails the request instead of waiting that long.
pub const MAX_RETRY_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses `Retry-After` (delta seconds or an HTTP-date, relative to `now`).
///
/// # Behavior
/// - Whole seconds (`"7"`), decimal or exponent notation (`"1.5"`, `"1e3"`) and HTTP dates
///   are read; the result is capped at [`MAX_RETRY_HINT`], so any number (up to
///   `18446744073709551615` and beyond, `1e300`) gives at most one day.
/// - A date in the past gives `Duration::ZERO`.
/// - Negative numbers, `NaN`, `inf` and anything unparsable give `None` (the caller falls
///   back to its own backoff).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    parse_retry_after(v, now)
}

fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_HINT));
    }
    if v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty() {
        // More digits than a u64 holds: a (very) large number of seconds.
        return Some(MAX_RETRY_HINT);
    }
    if let Ok(secs) = v.parse::<f64>() {
        return secs_to_hint(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_HINT),
    )
}

/// Seconds as a hint: `None` unless finite and not negative; capped at [`MAX_RETRY_HINT`].
fn secs_to_hint(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let capped = secs.min(MAX_RETRY_HINT.as_secs_f64());
    Some(Duration::try_from_secs_f64(capped).map_or(MAX_RETRY_HINT, |d| d.min(MAX_RETRY_HINT)))
}

/// Reads `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset`.
///
/// The reset is accepted as seconds from now or as a Unix timestamp (in seconds, or in
/// milliseconds), decided by magnitude: values above 10^9 are timestamps. Returns `None`
/// unless both `remaining` and `reset` are present and parse.
pub fn x_ratelimit_state(headers: &HeaderMap, now: SystemTime) -> Option<RateState> {
    let remaining = header_f64(headers, "x-ratelimit-remaining")?;
    let reset = header_f64(headers, "x-ratelimit-reset")?;
    let limit = header_f64(headers, "x-ratelimit-limit").map(|l| l.max(0.0) as u64);
    Some(RateState {
        limit,
        remaining: remaining.max(0.0) as u64,
        reset_after: reset_to_duration(reset, now),
    })
}

/// Turns a reset value into a duration from `now`: seconds from now, or a Unix timestamp in
/// seconds (above 10^9) or milliseconds (above 10^12).
///
/// # Behavior
/// - Zero, negative, `NaN` and infinite values, and timestamps in the past, give
///   `Duration::ZERO`.
/// - The result is capped at [`MAX_RETRY_HINT`] (a larger value is a misreading, not a plan),
///   so `1e300` or `u64::MAX` give one day, never a panic or a wrap.
pub fn reset_to_duration(value: f64, now: SystemTime) -> Duration {
    if !value.is_finite() || value <= 0.0 {
        return Duration::ZERO;
    }
    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let secs = if value > 1e12 {
        value / 1000.0 - now_secs
    } else if value > 1e9 {
        value - now_secs
    } else {
        value
    };
    if secs.is_nan() || secs <= 0.0 {
        Duration::ZERO
    } else {
        secs_to_hint(secs).unwrap_or(Duration::ZERO)
    }
}

fn header_f64(headers: &HeaderMap, name: &str) -> Option<f64> {
    let v = headers.get(name)?.to_str().ok()?.trim();
    // Some platforms send a list ("100, 100;w=10"): take the first figure.
    let first = v.split([',', ';']).next()?.trim();
    first.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// The longest message taken from an error body.
const MAX_MESSAGE: usize = 300;

/// The standard mapping of a non-2xx status to an [`Error`], with `method`, `status` and the
/// URL without its query as context.
///
/// 401 `Unauthenticated`, 403 `PermissionDenied`, 404/410 `NotFound`, 409/412 `Conflict`,
/// 400/422 `InvalidInput`, 429 `RateLimited` (with `hint` as retry-after), 408 and 5xx
/// `Upstream` temporary, other statuses `Upstream` permanent. The message comes from the
/// body when it is short text or JSON with a `message`/`error`/`detail`-like field.
pub fn classify_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    method: &Method,
    url: &Url,
    hint: Option<Duration>,
) -> Error {
    let kind = match status.as_u16() {
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        404 | 410 => ErrorKind::NotFound,
        409 | 412 => ErrorKind::Conflict,
        400 | 422 => ErrorKind::InvalidInput,
        429 => ErrorKind::RateLimited,
        _ => ErrorKind::Upstream,
    };
    let detail = body_message(headers, body);
    let reason = status.canonical_reason().unwrap_or("unexpected status");
    let message = match detail {
        Some(d) => format!("HTTP {} {reason}: {d}", status.as_u16()),
        None => format!("HTTP {} {reason}", status.as_u16()),
    };
    let mut err = Error::new(kind, message);
    err = if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        err.temporary()
    } else {
        err.permanent()
    };
    if let Some(h) = hint {
        err = err.with_retry_after(h);
    }
    with_request_context(err, method, Some(status), url)
}

/// Adds `method`, `status` (if any) and the redacted `url` to `err`, unless already there.
pub fn with_request_context(
    mut err: Error,
    method: &Method,
    status: Option<StatusCode>,
    url: &Url,
) -> Error {
    if err.context_value("method").is_none() {
        err = err.with_context("method", method.as_str());
    }
    if let Some(s) = status
        && err.context_value("status").is_none()
    {
        err = err.with_context("status", s.as_u16());
    }
    if err.context_value("url").is_none() {
        err = err.with_context("url", redact_url(url.as_str()));
    }
    err
}

/// A short message from an error body: a JSON `message`-like field, or short plain text.
fn body_message(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let looks_json = ctype.contains("json") || body.first().is_some_and(|b| *b == b'{');
    if looks_json {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            return json_message(&v).map(|m| truncate(&m));
        }
        return None;
    }
    if (ctype.is_empty() || ctype.starts_with("text/plain")) && body.len() <= MAX_MESSAGE {
        let text = std::str::from_utf8(body).ok()?.trim();
        if !text.is_empty() && !text.contains('<') {
            return Some(truncate(text));
        }
    }
    None
}

fn json_message(v: &serde_json::Value) -> Option<String> {
    const KEYS: [&str; 6] = [
        "message",
        "error_description",
        "detail",
        "title",
        "error",
        "errors",
    ];
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(map) => KEYS
            .iter()
            .filter_map(|k| map.get(*k))
            .find_map(json_message),
        serde_json::Value::Array(items) => items.iter().find_map(json_message),
        _ => None,
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_MESSAGE).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn retry_after_delta_and_date() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let d = retry_after(&headers(&[("retry-after", &date)]), now).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(29),
            "{d:?}"
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
    }

    #[test]
    fn retry_after_extremes_never_panic_and_are_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day = MAX_RETRY_HINT;
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("+5", Some(Duration::from_secs(5))),
            ("86400", Some(day)),
            ("86401", Some(day)),
            ("99999999", Some(day)),
            ("18446744073709551615", Some(day)),
            ("18446744073709551616", Some(day)),
            ("999999999999999999999999999999999999", Some(day)),
            ("9223372036854775807", Some(day)),
            ("1.5", Some(Duration::from_millis(1500))),
            ("1e3", Some(Duration::from_secs(1000))),
            ("1e300", Some(day)),
            ("1.7976931348623157e308", Some(day)),
            ("1e-300", Some(Duration::ZERO)),
            ("-0", Some(Duration::ZERO)),
            ("-1", None),
            ("-9223372036854775808", None),
            ("-1e300", None),
            ("NaN", None),
            ("nan", None),
            ("inf", None),
            ("-inf", None),
            ("infinity", None),
            ("", None),
            ("soon", None),
            ("Fri, 31 Dec 9999 23:59:59 GMT", Some(day)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
        ];
        for (v, want) in cases {
            let got = retry_after(&headers(&[("retry-after", v)]), now);
            assert_eq!(got, *want, "Retry-After: {v:?}");
        }
        // A clock before the epoch (or far in the future) does not matter either.
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
                UNIX_EPOCH
            ),
            Some(day)
        );
    }

    #[test]
    fn reset_extremes_never_panic_and_are_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day = MAX_RETRY_HINT;
        let cases: &[(f64, Duration)] = &[
            (0.0, Duration::ZERO),
            (-0.0, Duration::ZERO),
            (-1.0, Duration::ZERO),
            (i64::MIN as f64, Duration::ZERO),
            (f64::NAN, Duration::ZERO),
            (f64::INFINITY, Duration::ZERO),
            (f64::NEG_INFINITY, Duration::ZERO),
            (2.5, Duration::from_millis(2500)),
            (86_400.0, day),
            (999_999_999.0, day),
            // Epoch seconds: past, near future, far future.
            (1_600_000_000.0, Duration::ZERO),
            (1_700_000_010.0, Duration::from_secs(10)),
            (9_999_999_999.0, day),
            // Epoch milliseconds.
            (1_700_000_000_500.0, Duration::from_millis(500)),
            (1_600_000_000_000.0, Duration::ZERO),
            (i64::MAX as f64, day),
            (u64::MAX as f64, day),
            (1e300, day),
            (f64::MAX, day),
            (f64::MIN_POSITIVE, Duration::ZERO),
        ];
        for (v, want) in cases {
            assert_eq!(reset_to_duration(*v, now), *want, "reset {v:e}");
        }
        assert_eq!(reset_to_duration(1e300, UNIX_EPOCH), day);
    }

    #[test]
    fn x_ratelimit_headers_at_the_extremes() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (remaining, reset, want) in [
            (
                "18446744073709551615",
                "1e300",
                Some((u64::MAX, MAX_RETRY_HINT)),
            ),
            ("-5", "-5", Some((0, Duration::ZERO))),
            (
                "1e300",
                "18446744073709551615",
                Some((u64::MAX, MAX_RETRY_HINT)),
            ),
            ("NaN", "5", None),
            ("5", "inf", None),
            ("0", "nan", None),
            ("0.5", "0.25", Some((0, Duration::from_millis(250)))),
        ] {
            let h = headers(&[
                ("x-ratelimit-remaining", remaining),
                ("x-ratelimit-reset", reset),
                ("x-ratelimit-limit", "-1e400"),
            ]);
            let got = x_ratelimit_state(&h, now).map(|s| (s.remaining, s.reset_after));
            assert_eq!(got, want, "{remaining} {reset}");
        }
    }

    proptest::proptest! {
        #[test]
        fn retry_after_never_panics_and_stays_under_the_cap(
            v in "[-+0-9.eE]{0,30}|[ -~]{0,40}|(NaN|inf|-inf|infinity)",
            now_secs in 0u64..=253_402_300_799,
        ) {
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            if let Ok(hv) = http::HeaderValue::from_str(&v) {
                let mut h = HeaderMap::new();
                h.insert(header::RETRY_AFTER, hv.clone());
                if let Some(d) = retry_after(&h, now) {
                    proptest::prop_assert!(d <= MAX_RETRY_HINT);
                }
                h.insert("x-ratelimit-remaining", http::HeaderValue::from_static("0"));
                h.insert("x-ratelimit-reset", hv);
                if let Some(s) = x_ratelimit_state(&h, now) {
                    proptest::prop_assert!(s.reset_after <= MAX_RETRY_HINT);
                }
            }
        }

        #[test]
        fn reset_never_panics_and_stays_under_the_cap(v in proptest::num::f64::ANY, now_secs in 0u64..=u32::MAX as u64 * 8) {
            let now = UNIX_EPOCH + Duration::from_secs(now_secs);
            proptest::prop_assert!(reset_to_duration(v, now) <= MAX_RETRY_HINT);
        }
    }

    #[test]
    fn x_ratelimit_reset_by_magnitude() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = x_ratelimit_state(
            &headers(&[
                ("x-ratelimit-limit", "100"),
                ("x-ratelimit-remaining", "3"),
                ("x-ratelimit-reset", "12"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(
            s,
            RateState {
                limit: Some(100),
                remaining: 3,
                reset_after: Duration::from_secs(12)
            }
        );
        let s = x_ratelimit_state(
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000042"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(s.reset_after, Duration::from_secs(42));
        let s = x_ratelimit_state(
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "1700000002500"),
            ]),
            now,
        )
        .unwrap();
        assert_eq!(s.reset_after, Duration::from_millis(2500));
        assert!(x_ratelimit_state(&headers(&[("x-ratelimit-remaining", "0")]), now).is_none());
    }

    #[test]
    fn classify_maps_statuses_and_keeps_headers_out() {
        let url = Url::parse("https://api.example.com/v1/x?api_key=SECRET").unwrap();
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-secret", "HEADER-SECRET"),
        ]);
        let p = DefaultPolicy;
        let cases = [
            (401, ErrorKind::Unauthenticated, false),
            (403, ErrorKind::PermissionDenied, false),
            (404, ErrorKind::NotFound, false),
            (409, ErrorKind::Conflict, false),
            (412, ErrorKind::Conflict, false),
            (400, ErrorKind::InvalidInput, false),
            (422, ErrorKind::InvalidInput, false),
            (429, ErrorKind::RateLimited, true),
            (500, ErrorKind::Upstream, true),
            (503, ErrorKind::Upstream, true),
        ];
        for (code, kind, temp) in cases {
            let e = p.classify(
                StatusCode::from_u16(code).unwrap(),
                &h,
                br#"{"message":"bad thing"}"#,
                &Method::GET,
                &url,
            );
            assert_eq!(e.kind(), kind, "{code}");
            assert_eq!(e.is_temporary(), temp, "{code}");
            let s = format!("{e} {e:?}");
            assert!(s.contains("bad thing"), "{s}");
            assert!(!s.contains("SECRET"), "{s}");
            assert_eq!(e.context_value("status"), Some(code.to_string().as_str()));
            assert_eq!(e.context_value("method"), Some("GET"));
        }
    }

    #[test]
    fn classify_429_takes_retry_after_or_reset() {
        let url = Url::parse("https://api.example.com/v1/x").unwrap();
        let e = DefaultPolicy.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "9")]),
            b"",
            &Method::GET,
            &url,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(9)));
        let e = DefaultPolicy.classify(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "4")]),
            b"",
            &Method::GET,
            &url,
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(4)));
    }

    #[test]
    fn body_message_only_for_short_text_or_json() {
        let h = headers(&[("content-type", "text/html")]);
        assert_eq!(body_message(&h, b"<html>oops</html>"), None);
        let h = headers(&[("content-type", "text/plain")]);
        assert_eq!(
            body_message(&h, b"  quota exceeded \n"),
            Some("quota exceeded".into())
        );
        assert_eq!(body_message(&h, &[b'x'; 1000]), None);
        let h = headers(&[("content-type", "application/json")]);
        assert_eq!(
            body_message(&h, br#"[{"errorCode":"X","message":"field missing"}]"#),
            Some("field missing".into())
        );
        assert_eq!(
            body_message(&h, br#"{"error":{"message":"nested"}}"#),
            Some("nested".into())
        );
    }
}
