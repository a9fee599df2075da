//! The Standard Webhooks spec (<https://www.standardwebhooks.com/>): `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated `v1,<base64>`
//! entries) over `"{id}.{timestamp}.{body}"` with HMAC-SHA256; secrets are `whsec_<base64>`.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::Hmac;
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use super::{
    Verified, WebhookError, WebhookRequest, WebhookSecrets, WebhookVerifier, check_tolerance,
    unix_ms,
};

const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
const SIGNATURE: &str = "webhook-signature";

/// Verifies (and signs) webhooks per the Standard Webhooks spec, so a platform crate for any
/// service that signs this way needs no crypto code of its own.
///
/// # Examples
/// ```
/// use std::time::SystemTime;
/// use apex_connect_core::webhook::{StandardWebhooksVerifier, WebhookRequest, WebhookVerifier};
/// use http::{HeaderMap, Method, Uri};
///
/// let v = StandardWebhooksVerifier::from_whsec(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
/// let (m, u, body) = (Method::POST, Uri::from_static("/hook"), br#"{"type":"x"}"#);
/// let now = SystemTime::now();
/// let headers = v.sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), body), now).unwrap();
/// let ok = v.verify(&WebhookRequest::new(&m, &u, &headers, body), now).unwrap();
/// assert!(ok.event_id.is_some());
/// ```
#[derive(Debug, Clone)]
pub struct StandardWebhooksVerifier {
    secrets: WebhookSecrets,
    tolerance: Duration,
}

impl StandardWebhooksVerifier {
    /// A verifier for secrets in the spec's `whsec_<base64>` form (current first).
    ///
    /// # Errors
    /// `Malformed` when a secret is not base64 after the optional `whsec_` prefix.
    pub fn from_whsec<I, S>(secrets: I) -> Result<Self, WebhookError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut keys = Vec::new();
        for s in secrets {
            let s = s.as_ref();
            let b64 = s.strip_prefix("whsec_").unwrap_or(s);
            let key = B64
                .decode(b64)
                .map_err(|_| WebhookError::Malformed("secret is not whsec_<base64>".into()))?;
            keys.push(key);
        }
        Ok(Self::new(WebhookSecrets::new(keys)))
    }

    /// A verifier for raw key bytes.
    pub fn new(secrets: WebhookSecrets) -> Self {
        StandardWebhooksVerifier {
            secrets,
            tolerance: Duration::from_secs(5 * 60),
        }
    }

    /// Changes the timestamp tolerance (default 5 minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }
}

impl WebhookVerifier for StandardWebhooksVerifier {
    fn verify(&self, req: &WebhookRequest<'_>, now: SystemTime) -> Result<Verified, WebhookError> {
        if self.secrets.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        let id = req.require_header(ID)?;
        let ts = req.require_header(TIMESTAMP)?;
        let sigs = req.require_header(SIGNATURE)?;
        let ts_secs: i64 = ts
            .trim()
            .parse()
            .map_err(|_| WebhookError::Malformed("webhook-timestamp is not an integer".into()))?;
        check_tolerance(ts_secs.saturating_mul(1000), now, self.tolerance)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.trim().as_bytes(), b".", req.body];
        for entry in sigs.split(' ').filter(|s| !s.is_empty()) {
            let Some((version, sig)) = entry.split_once(',') else {
                continue;
            };
            if version != "v1" {
                continue; // v1a (asymmetric) and future versions are not ours to check
            }
            let Ok(sig) = B64.decode(sig) else { continue };
            if let Some(idx) = self.secrets.find_mac::<Hmac<Sha256>>(&parts, &sig) {
                return Ok(Verified {
                    event_id: Some(id.to_string()),
                    timestamp_ms: Some(ts_secs * 1000),
                    reply: None,
                    secret_index: idx,
                });
            }
        }
        Err(WebhookError::BadSignature)
    }

    fn sign(&self, req: &WebhookRequest<'_>, now: SystemTime) -> Result<HeaderMap, WebhookError> {
        let id = match req.header(ID) {
            Some(id) => id.to_string(),
            None => format!("msg_{:x}", unix_ms(now) as u64 ^ fxhash(req.body)),
        };
        let ts = (unix_ms(now) / 1000).to_string();
        let mac = self.secrets.mac::<Hmac<Sha256>>(&[
            id.as_bytes(),
            b".",
            ts.as_bytes(),
            b".",
            req.body,
        ])?;
        let mut h = HeaderMap::new();
        let val = |s: String| {
            HeaderValue::from_str(&s).map_err(|_| WebhookError::Malformed("header".into()))
        };
        h.insert(ID, val(id)?);
        h.insert(TIMESTAMP, val(ts)?);
        h.insert(SIGNATURE, val(format!("v1,{}", B64.encode(mac)))?);
        Ok(h)
    }
}

fn fxhash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Uri};
    use std::time::UNIX_EPOCH;

    // The example from the Standard Webhooks reference implementations' test suites.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID_V: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(sig: &str, ts: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ID, ID_V.parse().unwrap());
        h.insert(TIMESTAMP, ts.parse().unwrap());
        h.insert(SIGNATURE, sig.parse().unwrap());
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(
        v: &StandardWebhooksVerifier,
        h: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, WebhookError> {
        let (m, u) = (Method::POST, Uri::from_static("/"));
        v.verify(&WebhookRequest::new(&m, &u, h, body), now)
    }

    #[test]
    fn published_vector_verifies() {
        let v = StandardWebhooksVerifier::from_whsec([SECRET]).unwrap();
        let ok = check(&v, &headers(SIG, TS), BODY, at(1614265330)).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some(ID_V));
        // several entries, one valid
        let multi = format!("v1,Zm9v {SIG} v2,abc");
        check(&v, &headers(&multi, TS), BODY, at(1614265330)).unwrap();
    }

    #[test]
    fn tampered_wrong_secret_expired_future_missing() {
        let v = StandardWebhooksVerifier::from_whsec([SECRET]).unwrap();
        let now = at(1614265330);
        assert_eq!(
            check(&v, &headers(SIG, TS), br#"{"test": 2432232315}"#, now),
            Err(WebhookError::BadSignature)
        );
        let other = StandardWebhooksVerifier::from_whsec(["whsec_dGVzdA=="]).unwrap();
        assert_eq!(
            check(&other, &headers(SIG, TS), BODY, now),
            Err(WebhookError::BadSignature)
        );
        assert!(matches!(
            check(&v, &headers(SIG, TS), BODY, at(1614265330 + 301)),
            Err(WebhookError::OutsideTolerance { .. })
        ));
        assert!(matches!(
            check(&v, &headers(SIG, TS), BODY, at(1614265330 - 301)),
            Err(WebhookError::OutsideTolerance { .. })
        ));
        let mut h = headers(SIG, TS);
        h.remove(SIGNATURE);
        assert_eq!(
            check(&v, &h, BODY, now),
            Err(WebhookError::MissingHeader(SIGNATURE))
        );
        assert!(matches!(
            check(&v, &headers(SIG, "soon"), BODY, now),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn rotation_accepts_old_secret_and_sign_roundtrips() {
        let v = StandardWebhooksVerifier::from_whsec(["whsec_bmV3LXNlY3JldA==", SECRET]).unwrap();
        let ok = check(&v, &headers(SIG, TS), BODY, at(1614265330)).unwrap();
        assert_eq!(ok.secret_index, 1);
        let (m, u) = (Method::POST, Uri::from_static("/"));
        let now = at(1_700_000_000);
        let h = v
            .sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), b"{}"), now)
            .unwrap();
        assert_eq!(check(&v, &h, b"{}", now).unwrap().secret_index, 0);
        assert!(!format!("{v:?}").contains("bmV3"));
    }
}
