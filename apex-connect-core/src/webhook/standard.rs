//! The Standard Webhooks spec (<https://www.standardwebhooks.com/>): `webhook-id`,
//! `webhook-timestamp` (Unix seconds) and `webhook-signature` (space-separated `v1,<base64>`
//! entries) over `"{id}.{timestamp}.{body}"` with HMAC-SHA256; secrets are `whsec_<base64>`.
//! Svix, where the spec comes from, sends the same values as `svix-id`, `svix-timestamp` and
//! `svix-signature`.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::Hmac;
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use super::{
    MAX_SIGNATURES, Verified, WebhookError, WebhookRequest, WebhookSecrets, WebhookVerifier,
    check_tolerance, unix_ms,
};

const ID: &str = "webhook-id";
const TIMESTAMP: &str = "webhook-timestamp";
const SIGNATURE: &str = "webhook-signature";
const SVIX_ID: &str = "svix-id";
const SVIX_TIMESTAMP: &str = "svix-timestamp";
const SVIX_SIGNATURE: &str = "svix-signature";

/// One family of header names: `[id, timestamp, signature]`.
type Family = [&'static str; 3];

const STANDARD_HEADERS: Family = [ID, TIMESTAMP, SIGNATURE];
const SVIX_HEADERS: Family = [SVIX_ID, SVIX_TIMESTAMP, SVIX_SIGNATURE];

/// The headers to check: the `svix-*` family when the request has any of its headers (then
/// `webhook-*` headers are ignored, whatever they say), else the `webhook-*` one. Never a mix.
fn family(req: &WebhookRequest<'_>) -> Family {
    if SVIX_HEADERS.iter().any(|h| req.headers.contains_key(*h)) {
        SVIX_HEADERS
    } else {
        STANDARD_HEADERS
    }
}

/// Verifies (and signs) webhooks per the Standard Webhooks spec, so a platform crate for any
/// service that signs this way needs no crypto code of its own.
///
/// # Behavior
/// - Reads `webhook-id`, `webhook-timestamp` and `webhook-signature`, or Svix's `svix-id`,
///   `svix-timestamp` and `svix-signature`. When any `svix-*` header is present the three
///   `svix-*` values are the ones checked (a missing one is `MissingHeader`) and `webhook-*`
///   headers are ignored; the two families are never mixed.
/// - The signature header holds space-separated `v1,<base64>` entries; entries of other
///   versions are skipped. More than [`super::MAX_SIGNATURES`] entries: `BadSignature`, before
///   any MAC is computed. The MAC is computed once per configured secret and compared with
///   every entry in constant time.
/// - A timestamp that is not an integer is `Malformed` when the request is correctly signed,
///   `BadSignature` otherwise; one outside the tolerance is `OutsideTolerance`.
/// - [`WebhookVerifier::sign`] writes the `webhook-*` headers.
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
        let [id_header, ts_header, sig_header] = family(req);
        let id = req.require_header(id_header)?;
        let ts = req.require_header(ts_header)?;
        let sigs = req.require_header(sig_header)?;
        let entries: Vec<&str> = sigs
            .split(' ')
            .filter(|s| !s.is_empty())
            .take(MAX_SIGNATURES + 1)
            .collect();
        if entries.len() > MAX_SIGNATURES {
            return Err(WebhookError::BadSignature);
        }
        let candidates: Vec<Vec<u8>> = entries
            .iter()
            .filter_map(|entry| entry.split_once(','))
            // v1a (asymmetric) and future versions are not ours to check.
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, sig)| B64.decode(sig).ok())
            .collect();
        let candidates: Vec<&[u8]> = candidates.iter().map(Vec::as_slice).collect();
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.trim().as_bytes(), b".", req.body];
        let signed = || {
            self.secrets
                .find_mac_among::<Hmac<Sha256>>(&parts, &candidates)
                .ok_or(WebhookError::BadSignature)
        };
        let Ok(ts_secs) = ts.trim().parse::<i64>() else {
            // Malformed only if it is signed; unsigned junk is a bad signature.
            signed()?;
            return Err(WebhookError::Malformed(
                format!("{ts_header} is not an integer").into(),
            ));
        };
        let ts_ms = ts_secs.saturating_mul(1000);
        // The cheap check first: a stale or future timestamp costs no HMAC.
        check_tolerance(ts_ms, now, self.tolerance)?;
        let index = signed()?;
        Ok(Verified {
            event_id: Some(id.to_string()),
            timestamp_ms: Some(ts_ms),
            reply: None,
            secret_index: index,
        })
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
    use crate::webhook::MACS_COMPUTED;
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
        // A timestamp that is not a number: unsigned, a bad signature (401); signed,
        // malformed (400).
        assert_eq!(
            check(&v, &headers(SIG, "soon"), BODY, now),
            Err(WebhookError::BadSignature)
        );
        let (m, u) = (Method::POST, Uri::from_static("/"));
        let mut h = headers(SIG, "soon");
        let mac = v
            .secrets
            .mac::<Hmac<Sha256>>(&[ID_V.as_bytes(), b".soon.", BODY])
            .unwrap();
        h.insert(
            SIGNATURE,
            format!("v1,{}", B64.encode(mac)).parse().unwrap(),
        );
        assert!(matches!(
            v.verify(&WebhookRequest::new(&m, &u, &h, BODY), now),
            Err(WebhookError::Malformed(_))
        ));
        // Extremes: refused, no overflow.
        for ts in [i64::MIN, -1, 0, i64::MAX] {
            assert!(matches!(
                check(&v, &headers(SIG, &ts.to_string()), BODY, now),
                Err(WebhookError::OutsideTolerance { .. })
            ));
        }
    }

    fn svix(h: &HeaderMap) -> HeaderMap {
        let mut out = HeaderMap::new();
        for (from, to) in STANDARD_HEADERS.iter().zip(SVIX_HEADERS) {
            if let Some(v) = h.get(*from) {
                out.insert(to, v.clone());
            }
        }
        out
    }

    #[test]
    fn svix_headers_verify_and_win_over_webhook_headers() {
        let v = StandardWebhooksVerifier::from_whsec([SECRET]).unwrap();
        let now = at(1614265330);
        let good = headers(SIG, TS);
        let ok = check(&v, &svix(&good), BODY, now).unwrap();
        assert_eq!(ok.event_id.as_deref(), Some(ID_V));
        // A bad svix-* set next to a good webhook-* set is refused: svix-* is what is checked.
        let mut both = good.clone();
        both.extend(svix(&headers("v1,Zm9vYmFy", TS)));
        assert_eq!(check(&v, &both, BODY, now), Err(WebhookError::BadSignature));
        // The other way round is accepted: the webhook-* values are ignored.
        let mut both = headers("v1,Zm9vYmFy", TS);
        both.extend(svix(&good));
        check(&v, &both, BODY, now).unwrap();
        // Never a mix: svix-id and svix-timestamp with only webhook-signature.
        let mut mixed = svix(&good);
        mixed.remove(SVIX_SIGNATURE);
        mixed.insert(SIGNATURE, SIG.parse().unwrap());
        assert_eq!(
            check(&v, &mixed, BODY, now),
            Err(WebhookError::MissingHeader(SVIX_SIGNATURE))
        );
        let mut expired = svix(&good);
        expired.insert(SVIX_TIMESTAMP, "1614265000".parse().unwrap());
        assert!(matches!(
            check(&v, &expired, BODY, now),
            Err(WebhookError::OutsideTolerance { .. })
        ));
    }

    #[test]
    fn signature_entries_are_capped_and_each_secret_is_hashed_once() {
        let v = StandardWebhooksVerifier::from_whsec(["whsec_bmV3LXNlY3JldA==", SECRET]).unwrap();
        let now = at(1614265330);
        let junk = |n: usize| vec!["v1,Zm9vYmFy"; n].join(" ");
        // 15 junk entries and the valid one last: 16 entries, accepted, 2 MACs (2 secrets).
        let sixteen = format!("{} {SIG}", junk(MAX_SIGNATURES - 1));
        MACS_COMPUTED.with(|n| n.set(0));
        assert_eq!(
            check(&v, &headers(&sixteen, TS), BODY, now)
                .unwrap()
                .secret_index,
            1
        );
        assert_eq!(MACS_COMPUTED.with(|n| n.get()), 2);
        // 17 entries: refused whatever they hold, before any MAC.
        for seventeen in [
            format!("{} {SIG}", junk(MAX_SIGNATURES)),
            format!("{SIG} {}", junk(MAX_SIGNATURES)),
        ] {
            MACS_COMPUTED.with(|n| n.set(0));
            assert_eq!(
                check(&v, &headers(&seventeen, TS), BODY, now),
                Err(WebhookError::BadSignature)
            );
            assert_eq!(MACS_COMPUTED.with(|n| n.get()), 0);
        }
        // A thousand entries over a 1 MB body: refused at once.
        let big = vec![b'x'; 1 << 20];
        MACS_COMPUTED.with(|n| n.set(0));
        assert_eq!(
            check(&v, &headers(&junk(1000), TS), &big, now),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(MACS_COMPUTED.with(|n| n.get()), 0);
        // No usable entry at all.
        assert_eq!(
            check(&v, &headers("v2,abc v1 ,,, v1,!!!", TS), BODY, now),
            Err(WebhookError::BadSignature)
        );
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

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// Header bytes: arbitrary, or numbers (timestamps at every magnitude), or
        /// signature-shaped entries.
        fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..48),
                any::<i64>().prop_map(|n| n.to_string().into_bytes()),
                vec(vec(any::<u8>(), 0..40), 0..20).prop_map(|entries| entries
                    .iter()
                    .map(|e| format!("v1,{}", B64.encode(e)))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .into_bytes()),
            ]
        }

        /// A body different from `body`: a flipped byte, an extra byte, or one byte fewer.
        pub(crate) fn mutate(body: &[u8], kind: u8, at: usize, flip: u8) -> Vec<u8> {
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

        proptest! {
            #[test]
            fn arbitrary_requests_never_panic(
                id in header_bytes(),
                ts in header_bytes(),
                sig in header_bytes(),
                use_svix in any::<bool>(),
                body in vec(any::<u8>(), 0..128),
                now_secs in 0u64..(1 << 40),
            ) {
                let v = StandardWebhooksVerifier::from_whsec([SECRET]).unwrap();
                let names = if use_svix { SVIX_HEADERS } else { STANDARD_HEADERS };
                let mut h = HeaderMap::new();
                for (name, value) in names.iter().zip([&id, &ts, &sig]) {
                    if let Ok(value) = HeaderValue::from_bytes(value) {
                        h.insert(*name, value);
                    }
                }
                let _ = check(&v, &h, &body, at(now_secs));
            }

            #[test]
            fn a_mutated_body_never_verifies(
                body in vec(any::<u8>(), 0..128),
                kind in any::<u8>(),
                pos in any::<usize>(),
                flip in any::<u8>(),
                now_secs in 0u64..4_000_000_000,
                use_svix in any::<bool>(),
            ) {
                let v = StandardWebhooksVerifier::from_whsec([SECRET]).unwrap();
                let (m, u) = (Method::POST, Uri::from_static("/"));
                let now = at(now_secs);
                let mut signed = v.sign(&WebhookRequest::new(&m, &u, &HeaderMap::new(), &body), now).unwrap();
                if use_svix {
                    signed = svix(&signed);
                }
                prop_assert!(check(&v, &signed, &body, now).is_ok());
                let other = mutate(&body, kind, pos, flip);
                prop_assert_eq!(check(&v, &signed, &other, now), Err(WebhookError::BadSignature));
            }
        }
    }
}
