//! Webhook verification: the `WebhookVerifier` trait, its error, shared HMAC helpers, and a
//! verifier for the Standard Webhooks spec.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::Mac;
use hmac::digest::KeyInit;
use http::{HeaderMap, Method, Uri};
use secrecy::{ExposeSecret, SecretSlice};
use subtle::ConstantTimeEq;

mod standard;

pub use standard::StandardWebhooksVerifier;

/// The parts of an incoming webhook request a verifier may look at. The body is the raw bytes
/// exactly as received: never re-serialize a parsed body before verifying it.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    /// The HTTP method.
    pub method: &'a Method,
    /// The request URI as the platform called it (scheme and host included when known).
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The raw body.
    pub body: &'a [u8],
}

impl<'a> WebhookRequest<'a> {
    /// A request with these parts.
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        WebhookRequest {
            method,
            uri,
            headers,
            body,
        }
    }

    /// The value of header `name` as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of header `name`, or [`WebhookError::MissingHeader`].
    ///
    /// # Errors
    /// `MissingHeader` when absent or not text.
    pub fn require_header(&self, name: &'static str) -> Result<&'a str, WebhookError> {
        self.header(name).ok_or(WebhookError::MissingHeader(name))
    }
}

/// Why a webhook was refused. Hosts answer all of these with 401 (or 400 for `Malformed`)
/// and store nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A header the scheme needs is absent.
    #[error("webhook header `{0}` is missing")]
    MissingHeader(&'static str),
    /// No configured secret produces the signature given.
    #[error("webhook signature does not match")]
    BadSignature,
    /// The signed timestamp is further from now than the tolerance allows.
    #[error(
        "webhook timestamp is {skew_secs}s away from now, outside the {tolerance_secs}s tolerance"
    )]
    OutsideTolerance {
        /// Timestamp minus now, in seconds (negative: in the past).
        skew_secs: i64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// A header or the body is not in the scheme's format.
    #[error("webhook is malformed: {0}")]
    Malformed(Cow<'static, str>),
    /// The verifier has no secret configured.
    #[error("webhook verifier has no secret configured")]
    NoSecret,
}

/// An answer the receiver must send instead of the plain 200 (a platform's validation
/// handshake, such as Front's `x-front-challenge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    /// HTTP status, usually 200.
    pub status: u16,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// The body to answer with.
    pub body: Bytes,
}

/// What a successful verification learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    /// The delivery's unique id when the scheme has one in its headers (`webhook-id`);
    /// platforms whose ids live in the body leave it to `parse_webhook`.
    pub event_id: Option<String>,
    /// The signed timestamp, in Unix milliseconds, when the scheme signs one.
    pub timestamp_ms: Option<i64>,
    /// The answer to send instead of a plain 200, for handshakes.
    pub reply: Option<WebhookReply>,
    /// Which configured secret matched (0 = the current one), to watch a rotation.
    pub secret_index: usize,
}

/// A webhook that passed verification, owned, as stored in the inbox and given to
/// [`crate::Webhooks::parse`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedWebhook {
    /// What the verifier learned.
    pub verified: Verified,
    /// The headers as received.
    pub headers: HeaderMap,
    /// The raw body.
    pub body: Bytes,
    /// When it was received, Unix milliseconds.
    pub received_at_ms: i64,
}

impl VerifiedWebhook {
    /// A verified webhook from its parts.
    pub fn new(
        verified: Verified,
        headers: HeaderMap,
        body: Bytes,
        received_at: SystemTime,
    ) -> Self {
        VerifiedWebhook {
            verified,
            headers,
            body,
            received_at_ms: unix_ms(received_at),
        }
    }
}

/// Verifies (and, for tests and simulators, signs) one platform's webhooks.
///
/// # Behavior
/// - Pure and synchronous: no I/O; the clock is the `now` argument.
/// - Works on the raw body bytes; one changed byte fails with `BadSignature`.
/// - Compares signatures in constant time.
/// - Accepts a signature made with any configured secret (rotation), reporting which.
/// - Refuses a signed timestamp outside the tolerance (past or future) with `OutsideTolerance`.
/// - A missing signature header is `MissingHeader`, never a panic.
/// - Refusals are consistent across platforms: a request that is not correctly signed is
///   `BadSignature` or `MissingHeader` (hosts answer 401), whatever else is wrong with it
///   (an empty, undecodable or oversized signature header included); `Malformed` (400) is
///   kept for requests whose signature verifies but whose signed parts are unusable (a
///   timestamp that is not a number; a body the connector's `webhook_events` cannot split).
/// - Several signatures in one request (Standard Webhooks): at most [`MAX_SIGNATURES`] are
///   looked at, and each secret's MAC is computed once ([`WebhookSecrets::find_mac_among`]).
/// - Arbitrary header values and bodies never panic, and no signature verifies over a body
///   other than the one it was made for (each verifier has a property test of both).
/// - `verify(sign(req, now), now)` succeeds.
pub trait WebhookVerifier: Send + Sync + fmt::Debug {
    /// Checks a request.
    ///
    /// # Errors
    /// See [`WebhookError`].
    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, WebhookError>;

    /// The headers that sign `request` at `now` with the current (first) secret, as the
    /// platform would send them. For tests, simulators and webhook senders.
    ///
    /// # Errors
    /// `NoSecret` when no secret is configured.
    fn sign(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<HeaderMap, WebhookError>;
}

/// A webhook signing secret (or several, during rotation: the first signs, all verify).
/// `Debug` shows only how many there are.
#[derive(Clone)]
pub struct WebhookSecrets {
    secrets: Vec<SecretSlice<u8>>,
}

impl WebhookSecrets {
    /// Secrets from raw key bytes, the current one first.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        WebhookSecrets {
            secrets: secrets
                .into_iter()
                .map(|s| SecretSlice::from(s.as_ref().to_vec()))
                .collect(),
        }
    }

    /// One secret.
    pub fn single(secret: impl AsRef<[u8]>) -> Self {
        Self::new([secret])
    }

    /// Whether none is configured.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The secrets, current first.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.secrets.iter().map(|s| s.expose_secret())
    }

    /// The current (signing) secret.
    ///
    /// # Errors
    /// `NoSecret` when empty.
    pub fn current(&self) -> Result<&[u8], WebhookError> {
        self.secrets
            .first()
            .map(|s| s.expose_secret())
            .ok_or(WebhookError::NoSecret)
    }

    /// The index of the first secret whose `M` MAC over the concatenation of `parts` equals
    /// `expected`, compared in constant time.
    pub fn find_mac<M: Mac + KeyInit>(&self, parts: &[&[u8]], expected: &[u8]) -> Option<usize> {
        self.find_mac_among::<M>(parts, &[expected])
    }

    /// The index of the first secret whose `M` MAC over the concatenation of `parts` equals
    /// one of `candidates` (the entries of a header that carries several signatures).
    ///
    /// Each secret's MAC is computed once, however many candidates there are, and compared
    /// with every candidate in constant time. More than [`MAX_SIGNATURES`] candidates: `None`
    /// without computing anything (a request with a thousand entries costs nothing).
    pub fn find_mac_among<M: Mac + KeyInit>(
        &self,
        parts: &[&[u8]],
        candidates: &[&[u8]],
    ) -> Option<usize> {
        if candidates.is_empty() || candidates.len() > MAX_SIGNATURES {
            return None;
        }
        let mut found = None;
        for (index, key) in self.iter().enumerate() {
            let computed = mac_of::<M>(key, parts);
            let mut matched = subtle::Choice::from(0);
            for candidate in candidates {
                matched |= computed.ct_eq(candidate);
            }
            if bool::from(matched) && found.is_none() {
                found = Some(index);
            }
        }
        found
    }

    /// The `M` MAC of the concatenation of `parts` with the current secret.
    ///
    /// # Errors
    /// `NoSecret` when empty.
    pub fn mac<M: Mac + KeyInit>(&self, parts: &[&[u8]]) -> Result<Vec<u8>, WebhookError> {
        Ok(mac_of::<M>(self.current()?, parts))
    }
}

/// The most signature entries a verifier looks at in one request (Standard Webhooks sends one
/// per active secret, so a handful at most). A request with more is refused as
/// [`WebhookError::BadSignature`] before any MAC is computed.
pub const MAX_SIGNATURES: usize = 16;

/// The `M` MAC of the concatenation of `parts` under `key`.
fn mac_of<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    #[cfg(test)]
    MACS_COMPUTED.with(|n| n.set(n.get() + 1));
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it. For a MAC that
    // does refuse this key, an empty output matches no signature.
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
thread_local! {
    /// MACs computed on this thread (tests count them).
    pub(crate) static MACS_COMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecrets([redacted; {}])", self.secrets.len())
    }
}

/// Unix milliseconds of `t` (0 before the epoch, `i64::MAX` beyond what `i64` holds).
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Checks that `timestamp_ms` is within `tolerance` of `now`, either way.
///
/// # Errors
/// `OutsideTolerance` with the skew.
pub fn check_tolerance(
    timestamp_ms: i64,
    now: SystemTime,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let skew_ms = timestamp_ms.saturating_sub(unix_ms(now));
    if u128::from(skew_ms.unsigned_abs()) > tolerance.as_millis() {
        return Err(WebhookError::OutsideTolerance {
            skew_secs: skew_ms / 1000,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    Ok(())
}
