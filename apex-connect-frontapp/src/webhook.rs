//! Front webhook verification: application webhooks (HMAC-SHA256 over
//! `"<timestamp>:<raw body>"`, with the validation handshake) and legacy rule webhooks
//! (HMAC-SHA1 over the raw body).

use std::time::{Duration, SystemTime};

use apex_connect_core::WebhookEvent;
use apex_connect_core::webhook::{
    Verified, WebhookError, WebhookReply, WebhookRequest, WebhookSecrets, WebhookVerifier,
    check_tolerance, unix_ms,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::Hmac;
use http::{HeaderMap, HeaderValue};
use sha1::Sha1;
use sha2::Sha256;

/// `x-front-signature`: base64 HMAC of the signed bytes.
pub const SIGNATURE_HEADER: &str = "x-front-signature";
/// `x-front-request-timestamp`: Unix milliseconds (application webhooks).
pub const TIMESTAMP_HEADER: &str = "x-front-request-timestamp";
/// `x-front-challenge`: sent only on the validation request of an application webhook.
pub const CHALLENGE_HEADER: &str = "x-front-challenge";

/// Timestamps below this are read as Unix seconds, at or above as milliseconds
/// (10^11 ms is March 1973; 10^11 s is the year 5138).
const MS_THRESHOLD: i64 = 100_000_000_000;

/// The signature bytes; a value that is not base64 cannot match, so it is a bad signature
/// (`401`), like every other wrong signature.
fn decode_signature(sig: &str) -> Result<Vec<u8>, WebhookError> {
    B64.decode(sig.trim())
        .map_err(|_| WebhookError::BadSignature)
}

/// A Front timestamp in milliseconds: values below [`MS_THRESHOLD`] in magnitude are seconds.
/// No overflow at the extremes (`i64::MIN` has no absolute value in `i64`).
fn timestamp_ms(ts: i64) -> i64 {
    if ts.unsigned_abs() < MS_THRESHOLD.unsigned_abs() {
        ts.saturating_mul(1000)
    } else {
        ts
    }
}

fn header_value(s: &str) -> Result<HeaderValue, WebhookError> {
    HeaderValue::from_str(s).map_err(|_| WebhookError::Malformed("header value".into()))
}

/// The `payload.id` (`evt_...`) of an application webhook body, or the `id` of a rule
/// webhook body, when the body is JSON.
fn body_event_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = v
        .get("payload")
        .and_then(|p| p.get("id"))
        .or_else(|| v.get("id"))?
        .as_str()?;
    id.starts_with("evt_").then(|| id.to_string())
}

/// The inbox event of a verified Front delivery (what `Webhooks::events` of `FrontConnector`
/// returns): always one event with the whole body, keyed by the verifier's event id, else
/// the body's `payload.id` (application webhooks) or `id` (rule webhooks), else
/// [`apex_connect_core::body_hash`] of the body.
///
/// # Errors
/// `Malformed` when the body is not a JSON object: Front sends one JSON object per webhook,
/// so anything else, even correctly signed, is refused at once (the receiver answers `400` and
/// stores nothing) rather than stored and dead-lettered later by the worker.
pub fn delivery_events(
    verified: &Verified,
    body: &Bytes,
) -> Result<Vec<WebhookEvent>, WebhookError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| WebhookError::Malformed("Front webhook body is not JSON".into()))?;
    if !value.is_object() {
        return Err(WebhookError::Malformed(
            "Front webhook body is not a JSON object".into(),
        ));
    }
    if verified.event_id.is_none()
        && let Some(id) = value
            .get("payload")
            .and_then(|p| p.get("id"))
            .or_else(|| value.get("id"))
            .and_then(serde_json::Value::as_str)
    {
        return Ok(vec![WebhookEvent::new(id, body.clone())]);
    }
    Ok(vec![WebhookEvent::whole_delivery(verified, body)])
}

/// Verifies Front **application webhooks**.
///
/// The signature is `base64(HMAC-SHA256(app_secret, "<x-front-request-timestamp>:" + raw_body))`
/// in `x-front-signature`. The timestamp is in milliseconds (seconds are accepted, told apart
/// by magnitude) and must be within the tolerance (default 5 minutes) of now, either way.
/// Several secrets may be configured during a rotation: the first signs, any verifies.
///
/// A validation request (header `x-front-challenge`, body `{"type":"sync",...}`) is verified
/// like any other; [`Verified::reply`] then carries the answer Front expects:
/// `200 {"challenge":"<value>"}` as `application/json`.
///
/// # Examples
/// ```
/// use std::time::{Duration, SystemTime};
/// use apex_connect_core::webhook::{WebhookRequest, WebhookVerifier};
/// use apex_connect_frontapp::FrontAppWebhookVerifier;
/// use http::{HeaderMap, Method, Uri};
///
/// let v = FrontAppWebhookVerifier::new(["front-app-secret-example"]);
/// let body = br#"{"type":"sync","authorization":{"id":"cmp_abc"}}"#;
/// let mut headers = HeaderMap::new();
/// headers.insert("x-front-request-timestamp", "1700000000000".parse().unwrap());
/// headers.insert("x-front-signature", "PACzC8ojKqongEQ+mJbu7uj2Y2a05xQE//BqaFRKs/o=".parse().unwrap());
/// headers.insert("x-front-challenge", "abc123".parse().unwrap());
/// let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000);
/// let (m, u) = (Method::POST, Uri::from_static("/webhooks/frontapp/acme"));
/// let ok = v.verify(&WebhookRequest::new(&m, &u, &headers, body), now).unwrap();
/// let reply = ok.reply.unwrap();
/// assert_eq!(reply.status, 200);
/// assert_eq!(&reply.body[..], br#"{"challenge":"abc123"}"#);
/// ```
#[derive(Debug, Clone)]
pub struct FrontAppWebhookVerifier {
    secrets: WebhookSecrets,
    tolerance: Duration,
}

impl FrontAppWebhookVerifier {
    /// A verifier for these app secrets (current first).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Self::from_secrets(WebhookSecrets::new(secrets))
    }

    /// A verifier for already wrapped secrets.
    pub fn from_secrets(secrets: WebhookSecrets) -> Self {
        FrontAppWebhookVerifier {
            secrets,
            tolerance: Duration::from_secs(5 * 60),
        }
    }

    /// Changes the timestamp tolerance (default 5 minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The signature of `body` at `timestamp` (as sent in the header) with the current secret.
    ///
    /// # Errors
    /// `NoSecret` when no secret is configured.
    pub fn signature(&self, timestamp: &str, body: &[u8]) -> Result<String, WebhookError> {
        let mac = self
            .secrets
            .mac::<Hmac<Sha256>>(&[timestamp.as_bytes(), b":", body])?;
        Ok(B64.encode(mac))
    }
}

impl WebhookVerifier for FrontAppWebhookVerifier {
    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, WebhookError> {
        if self.secrets.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        let sig = request.require_header(SIGNATURE_HEADER)?;
        let ts_text = request.require_header(TIMESTAMP_HEADER)?.trim();
        let expected = decode_signature(sig)?;
        // The signature (over the timestamp's text) is checked before the timestamp is read,
        // so that an unsigned request is always `BadSignature` and an attacker learns nothing
        // about the timestamp rules or the tolerance.
        let index = self
            .secrets
            .find_mac::<Hmac<Sha256>>(&[ts_text.as_bytes(), b":", request.body], &expected)
            .ok_or(WebhookError::BadSignature)?;
        let ts: i64 = ts_text.parse().map_err(|_| {
            WebhookError::Malformed("x-front-request-timestamp is not an integer".into())
        })?;
        let ts_ms = timestamp_ms(ts);
        check_tolerance(ts_ms, now, self.tolerance)?;
        let mut verified = Verified::default();
        verified.timestamp_ms = Some(ts_ms);
        verified.secret_index = index;
        if let Some(challenge) = request.header(CHALLENGE_HEADER) {
            let body = serde_json::to_vec(&serde_json::json!({ "challenge": challenge }))
                .map_err(|_| WebhookError::Malformed("challenge".into()))?;
            verified.reply = Some(WebhookReply {
                status: 200,
                content_type: "application/json",
                body: Bytes::from(body),
            });
        } else {
            verified.event_id = body_event_id(request.body);
        }
        Ok(verified)
    }

    fn sign(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<HeaderMap, WebhookError> {
        let ts = unix_ms(now).to_string();
        let sig = self.signature(&ts, request.body)?;
        let mut headers = HeaderMap::new();
        headers.insert(TIMESTAMP_HEADER, header_value(&ts)?);
        headers.insert(SIGNATURE_HEADER, header_value(&sig)?);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(headers)
    }
}

/// Verifies Front **rule webhooks** (legacy signing): `x-front-signature` is
/// `base64(HMAC-SHA1(api_secret, raw_body))`. There is no timestamp and no handshake, so a
/// captured request can be replayed: dedupe on the event id (the inbox does).
#[derive(Debug, Clone)]
pub struct FrontRuleWebhookVerifier {
    secrets: WebhookSecrets,
}

impl FrontRuleWebhookVerifier {
    /// A verifier for these API secrets (current first).
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        FrontRuleWebhookVerifier {
            secrets: WebhookSecrets::new(secrets),
        }
    }

    /// The signature of `body` with the current secret.
    ///
    /// # Errors
    /// `NoSecret` when no secret is configured.
    pub fn signature(&self, body: &[u8]) -> Result<String, WebhookError> {
        Ok(B64.encode(self.secrets.mac::<Hmac<Sha1>>(&[body])?))
    }
}

impl WebhookVerifier for FrontRuleWebhookVerifier {
    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        _now: SystemTime,
    ) -> Result<Verified, WebhookError> {
        if self.secrets.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        let expected = decode_signature(request.require_header(SIGNATURE_HEADER)?)?;
        let index = self
            .secrets
            .find_mac::<Hmac<Sha1>>(&[request.body], &expected)
            .ok_or(WebhookError::BadSignature)?;
        let mut verified = Verified::default();
        verified.secret_index = index;
        verified.event_id = body_event_id(request.body);
        Ok(verified)
    }

    fn sign(
        &self,
        request: &WebhookRequest<'_>,
        _now: SystemTime,
    ) -> Result<HeaderMap, WebhookError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            SIGNATURE_HEADER,
            header_value(&self.signature(request.body)?)?,
        );
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    //! Vectors. The first two are the local-check vectors of the platform notes
    //! (shared/platforms/frontapp-hubspot.md, A5.1 and A5.2). The others were computed with
    //! Python's `hmac`/`base64` for these tests:
    //!
    //! - app secret `apex-front-secret`, timestamp `1700000123456` (ms), body
    //!   [`APP_BODY`]: `8imn5KXzG797ZKg+4Ek4ud80picfIW8FLtLl9+wgKSM=`
    //! - same secret and body, timestamp `1700000123` (seconds):
    //!   `yWEc7OHXoMZx8tyy2WdFua7W9ybn9/yvXsTmDVToTLo=`
    //! - rule secret `apex-rule-secret`, body `{"id":"evt_9","type":"tag"}`:
    //!   `JR+zo8z5NIflX+QiTPgQQ6enhSk=`
    use super::*;
    use http::{Method, Uri};

    const APP_BODY: &[u8] = br#"{"type":"inbound_received","authorization":{"id":"cmp_1"},"payload":{"id":"evt_1","type":"inbound"}}"#;

    fn at_ms(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn verify(
        v: &dyn WebhookVerifier,
        h: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, WebhookError> {
        let (m, u) = (Method::POST, Uri::from_static("/hook"));
        v.verify(&WebhookRequest::new(&m, &u, h, body), now)
    }

    #[test]
    fn platform_doc_vectors() {
        let v = FrontAppWebhookVerifier::new(["front-app-secret-example"]);
        let body = br#"{"type":"sync","authorization":{"id":"cmp_abc"}}"#;
        assert_eq!(
            v.signature("1700000000000", body).unwrap(),
            "PACzC8ojKqongEQ+mJbu7uj2Y2a05xQE//BqaFRKs/o="
        );
        let r = FrontRuleWebhookVerifier::new(["front-api-secret-example"]);
        let body = br#"{"id":"evt_123","type":"inbound"}"#;
        assert_eq!(r.signature(body).unwrap(), "llmmtrvdyWjv7uSX4TGasWJITGk=");
        let h = headers(&[(SIGNATURE_HEADER, "llmmtrvdyWjv7uSX4TGasWJITGk=")]);
        let ok = verify(&r, &h, body, SystemTime::now()).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some("evt_123"));
    }

    #[test]
    fn app_valid_tampered_wrong_secret_times_missing() {
        let v = FrontAppWebhookVerifier::new(["apex-front-secret"]);
        let sig = "8imn5KXzG797ZKg+4Ek4ud80picfIW8FLtLl9+wgKSM=";
        let h = headers(&[(TIMESTAMP_HEADER, "1700000123456"), (SIGNATURE_HEADER, sig)]);
        let now = at_ms(1_700_000_123_456 + 10_000);

        let ok = verify(&v, &h, APP_BODY, now).unwrap();
        assert_eq!(ok.timestamp_ms, Some(1_700_000_123_456));
        assert_eq!(ok.event_id.as_deref(), Some("evt_1"));
        assert!(ok.reply.is_none());

        let mut tampered = APP_BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&v, &h, &tampered, now),
            Err(WebhookError::BadSignature)
        );

        let wrong = FrontAppWebhookVerifier::new(["another-secret"]);
        assert_eq!(
            verify(&wrong, &h, APP_BODY, now),
            Err(WebhookError::BadSignature)
        );

        let old = at_ms(1_700_000_123_456 + 5 * 60_000 + 1_000);
        assert!(matches!(
            verify(&v, &h, APP_BODY, old),
            Err(WebhookError::OutsideTolerance { skew_secs: s, .. }) if s < 0
        ));
        let future = at_ms(1_700_000_123_456 - 5 * 60_000 - 1_000);
        assert!(matches!(
            verify(&v, &h, APP_BODY, future),
            Err(WebhookError::OutsideTolerance { skew_secs: s, .. }) if s > 0
        ));

        let no_sig = headers(&[(TIMESTAMP_HEADER, "1700000123456")]);
        assert_eq!(
            verify(&v, &no_sig, APP_BODY, now),
            Err(WebhookError::MissingHeader(SIGNATURE_HEADER))
        );
        let no_ts = headers(&[(SIGNATURE_HEADER, sig)]);
        assert_eq!(
            verify(&v, &no_ts, APP_BODY, now),
            Err(WebhookError::MissingHeader(TIMESTAMP_HEADER))
        );
        // Unsigned junk is a bad signature (401), whatever is wrong with it...
        let junk = headers(&[(TIMESTAMP_HEADER, "soon"), (SIGNATURE_HEADER, sig)]);
        assert_eq!(
            verify(&v, &junk, APP_BODY, now),
            Err(WebhookError::BadSignature)
        );
        for bad_sig in ["%%%", "", "   ", "not base64!"] {
            let junk = headers(&[
                (TIMESTAMP_HEADER, "1700000123456"),
                (SIGNATURE_HEADER, bad_sig),
            ]);
            assert_eq!(
                verify(&v, &junk, APP_BODY, now),
                Err(WebhookError::BadSignature),
                "{bad_sig:?}"
            );
        }
        // ...while a correctly signed timestamp that is not a number is malformed (400).
        let signed_junk = v.signature("soon", APP_BODY).unwrap();
        let junk = headers(&[(TIMESTAMP_HEADER, "soon"), (SIGNATURE_HEADER, &signed_junk)]);
        assert!(matches!(
            verify(&v, &junk, APP_BODY, now),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn app_accepts_seconds_by_magnitude() {
        let v = FrontAppWebhookVerifier::new(["apex-front-secret"]);
        let h = headers(&[
            (TIMESTAMP_HEADER, "1700000123"),
            (
                SIGNATURE_HEADER,
                "yWEc7OHXoMZx8tyy2WdFua7W9ybn9/yvXsTmDVToTLo=",
            ),
        ]);
        let ok = verify(&v, &h, APP_BODY, at_ms(1_700_000_100_000)).unwrap();
        assert_eq!(ok.timestamp_ms, Some(1_700_000_123_000));
    }

    #[test]
    fn app_rotation_and_sign_roundtrip_and_challenge() {
        let v = FrontAppWebhookVerifier::new(["new-secret", "apex-front-secret"]);
        let h = headers(&[
            (TIMESTAMP_HEADER, "1700000123456"),
            (
                SIGNATURE_HEADER,
                "8imn5KXzG797ZKg+4Ek4ud80picfIW8FLtLl9+wgKSM=",
            ),
        ]);
        let ok = verify(&v, &h, APP_BODY, at_ms(1_700_000_123_456)).unwrap();
        assert_eq!(ok.secret_index, 1);

        let now = SystemTime::now();
        let body = br#"{"type":"sync","authorization":{"id":"cmp_1"}}"#;
        let (m, u) = (Method::POST, Uri::from_static("/hook"));
        let mut signed = v
            .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), body), now)
            .unwrap();
        signed.insert(CHALLENGE_HEADER, "ch-42".parse().unwrap());
        let ok = verify(&v, &signed, body, now).unwrap();
        assert_eq!(ok.secret_index, 0);
        let reply = ok.reply.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        assert_eq!(&reply.body[..], br#"{"challenge":"ch-42"}"#);

        let empty = FrontAppWebhookVerifier::new(Vec::<Vec<u8>>::new());
        assert_eq!(
            verify(&empty, &signed, body, now),
            Err(WebhookError::NoSecret)
        );
    }

    #[test]
    fn rule_vectors_and_failures() {
        let r = FrontRuleWebhookVerifier::new(["apex-rule-secret"]);
        let body = br#"{"id":"evt_9","type":"tag"}"#;
        let h = headers(&[(SIGNATURE_HEADER, "JR+zo8z5NIflX+QiTPgQQ6enhSk=")]);
        assert!(verify(&r, &h, body, SystemTime::now()).is_ok());
        assert_eq!(
            verify(
                &r,
                &h,
                br#"{"id":"evt_9","type":"untag"}"#,
                SystemTime::now()
            ),
            Err(WebhookError::BadSignature)
        );
        let wrong = FrontRuleWebhookVerifier::new(["nope"]);
        assert_eq!(
            verify(&wrong, &h, body, SystemTime::now()),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(&r, &HeaderMap::new(), body, SystemTime::now()),
            Err(WebhookError::MissingHeader(SIGNATURE_HEADER))
        );
        let (m, u) = (Method::POST, Uri::from_static("/hook"));
        let signed = r
            .sign(
                &WebhookRequest::new(&m, &u, &HeaderMap::new(), body),
                SystemTime::now(),
            )
            .unwrap();
        assert!(verify(&r, &signed, body, SystemTime::now()).is_ok());
        assert!(!format!("{r:?}").contains("apex-rule-secret"));
    }

    #[test]
    fn delivery_event_id_is_the_verifier_id_then_payload_id_then_id_then_hash() {
        let app = Bytes::from_static(br#"{"type":"tag","payload":{"id":"evt_9","type":"tag"}}"#);
        let events = delivery_events(&Verified::default(), &app).unwrap();
        assert_eq!(events, vec![WebhookEvent::new("evt_9", app.clone())]);
        let rule = Bytes::from_static(br#"{"id":"evt_7","type":"untag"}"#);
        assert_eq!(
            delivery_events(&Verified::default(), &rule).unwrap()[0].id,
            "evt_7"
        );
        let mut v = Verified::default();
        v.event_id = Some("evt_1".into());
        assert_eq!(delivery_events(&v, &app).unwrap()[0].id, "evt_1");
        // No id anywhere: one event keyed by the body hash.
        let body = Bytes::from_static(br#"{"type":"tag","payload":{}}"#);
        let events = delivery_events(&Verified::default(), &body).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, apex_connect_core::body_hash(&body));
        assert_eq!(events[0].body, body);
    }

    #[test]
    fn signed_bodies_that_are_not_a_json_object_are_malformed() {
        let mut with_id = Verified::default();
        with_id.event_id = Some("evt_1".into());
        for body in [
            &b"not json"[..],
            b"",
            b"[]",
            br#"[{"id":"evt_1"}]"#,
            b"42",
            br#""evt_1""#,
            b"null",
            br#"{"id":"evt_1""#,
        ] {
            let body = Bytes::copy_from_slice(body);
            for v in [&Verified::default(), &with_id] {
                assert!(
                    matches!(delivery_events(v, &body), Err(WebhookError::Malformed(_))),
                    "{}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    #[test]
    fn timestamps_at_the_extremes_never_overflow() {
        let v = FrontAppWebhookVerifier::new(["apex-front-secret"]);
        let now = at_ms(1_700_000_123_456);
        for ts in [
            i64::MIN,
            i64::MIN + 1,
            -MS_THRESHOLD,
            -MS_THRESHOLD + 1,
            -1,
            0,
            1,
            MS_THRESHOLD - 1,
            MS_THRESHOLD,
            i64::MAX / 1000 + 1,
            i64::MAX,
        ] {
            let text = ts.to_string();
            let sig = v.signature(&text, APP_BODY).unwrap();
            let h = headers(&[(TIMESTAMP_HEADER, &text), (SIGNATURE_HEADER, &sig)]);
            assert!(
                matches!(
                    verify(&v, &h, APP_BODY, now),
                    Err(WebhookError::OutsideTolerance { .. })
                ),
                "{ts}"
            );
        }
        assert_eq!(timestamp_ms(i64::MIN), i64::MIN);
        assert_eq!(timestamp_ms(-5), -5000);
        assert_eq!(timestamp_ms(MS_THRESHOLD - 1), (MS_THRESHOLD - 1) * 1000);
        // Out of i64 altogether: malformed once signed, bad signature otherwise.
        let text = "9223372036854775808";
        let sig = v.signature(text, APP_BODY).unwrap();
        let h = headers(&[(TIMESTAMP_HEADER, text), (SIGNATURE_HEADER, &sig)]);
        assert!(matches!(
            verify(&v, &h, APP_BODY, now),
            Err(WebhookError::Malformed(_))
        ));
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..48),
                any::<i64>().prop_map(|n| n.to_string().into_bytes()),
                vec(any::<u8>(), 0..40).prop_map(|b| B64.encode(b).into_bytes()),
            ]
        }

        /// A body different from `body`: a flipped byte, one byte fewer, or an extra byte.
        fn mutate(body: &[u8], kind: u8, at: usize, flip: u8) -> Vec<u8> {
            let mut out = body.to_vec();
            match (kind % 3, out.is_empty()) {
                (0, false) => {
                    let i = at % out.len();
                    out[i] ^= flip.max(1);
                }
                (1, false) => {
                    out.remove(at % out.len());
                }
                _ => out.insert(at % (out.len() + 1), flip),
            }
            out
        }

        fn verifiers() -> [Box<dyn WebhookVerifier>; 2] {
            [
                Box::new(FrontAppWebhookVerifier::new(["apex-front-secret"])),
                Box::new(FrontRuleWebhookVerifier::new(["apex-rule-secret"])),
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_requests_never_panic(
                sig in header_bytes(),
                ts in header_bytes(),
                challenge in proptest::option::of(header_bytes()),
                body in vec(any::<u8>(), 0..128),
                now_ms in 0u64..(1 << 50),
            ) {
                let mut h = HeaderMap::new();
                for (name, value) in [(SIGNATURE_HEADER, Some(&sig)), (TIMESTAMP_HEADER, Some(&ts)), (CHALLENGE_HEADER, challenge.as_ref())] {
                    if let Some(Ok(value)) = value.map(|v| HeaderValue::from_bytes(v)) {
                        h.insert(name, value);
                    }
                }
                for v in verifiers() {
                    if let Ok(ok) = verify(v.as_ref(), &h, &body, at_ms(now_ms)) {
                        // Only a signed request gets here; its body is then classified.
                        let _ = delivery_events(&ok, &Bytes::from(body.clone()));
                    }
                }
            }

            #[test]
            fn a_mutated_body_never_verifies(
                body in vec(any::<u8>(), 0..128),
                kind in any::<u8>(),
                pos in any::<usize>(),
                flip in any::<u8>(),
                // Real clocks: Unix milliseconds (which is what `sign` sends) since 1973.
                now_ms in (MS_THRESHOLD as u64)..(1 << 45),
            ) {
                let (m, u) = (Method::POST, Uri::from_static("/hook"));
                let now = at_ms(now_ms);
                for v in verifiers() {
                    let signed = v
                        .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), &body), now)
                        .unwrap();
                    prop_assert!(verify(v.as_ref(), &signed, &body, now).is_ok());
                    let other = mutate(&body, kind, pos, flip);
                    prop_assert_eq!(
                        verify(v.as_ref(), &signed, &other, now),
                        Err(WebhookError::BadSignature)
                    );
                }
            }
        }
    }
}
