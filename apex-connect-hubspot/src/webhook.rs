//! HubSpot webhook signatures (v1, v2, v3) and event payloads.
//!
//! | | source string | algorithm | encoding | header |
//! |---|---|---|---|---|
//! | v1 | `secret + body` | SHA-256 | hex | `X-HubSpot-Signature` (+ `X-HubSpot-Signature-Version: v1`) |
//! | v2 | `secret + method + URI + body` | SHA-256 | hex | `X-HubSpot-Signature` (+ `...-Version: v2`) |
//! | v3 | `method + URI + body + timestamp` | HMAC-SHA256, key = secret | base64 | `X-HubSpot-Signature-v3` + `X-HubSpot-Request-Timestamp` (ms) |
//!
//! For v3 the URI is the full URL HubSpot called, with the percent-encodings HubSpot's
//! documentation lists decoded (`%3A` `%2F` `%3F` `%40` `%21` `%24` `%27` `%28` `%29` `%2A`
//! `%2C` `%3B`); the timestamp must be within 5 minutes of now, either way.

use std::fmt;
use std::time::{Duration, SystemTime};

use apex_connect_core::webhook::{
    Verified, WebhookRequest, WebhookSecrets, check_tolerance, unix_ms,
};
use apex_connect_core::{WebhookError, WebhookEvent, WebhookVerifier};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::Hmac;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `X-HubSpot-Signature` (v1 and v2).
pub const SIGNATURE_HEADER: &str = "x-hubspot-signature";
/// `X-HubSpot-Signature-Version` (`v1` or `v2`).
pub const SIGNATURE_VERSION_HEADER: &str = "x-hubspot-signature-version";
/// `X-HubSpot-Signature-v3`.
pub const SIGNATURE_V3_HEADER: &str = "x-hubspot-signature-v3";
/// `X-HubSpot-Request-Timestamp` (Unix milliseconds, v3).
pub const TIMESTAMP_HEADER: &str = "x-hubspot-request-timestamp";
/// How far a v3 timestamp may be from now: 5 minutes.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// A HubSpot signature version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureVersion {
    /// Hex SHA-256 of `secret + body`.
    V1,
    /// Hex SHA-256 of `secret + method + URI + body`.
    V2,
    /// Base64 HMAC-SHA256 of `method + URI + body + timestamp`.
    V3,
}

/// Verifies (and signs) HubSpot webhooks with the app's client secret.
///
/// # Behavior
/// - A request with `X-HubSpot-Signature-v3` is verified as v3 (when v3 is accepted);
///   otherwise `X-HubSpot-Signature-Version` selects v1 or v2.
/// - The URI signed is the configured target URL when set (scheme, host and path as HubSpot
///   calls them, whatever a proxy rewrote) with the request's own query string (HubSpot signs
///   the full URL it called, query included; the configured URL's query is used only when the
///   request has none). Without a target URL it is the request's URI, which must then be
///   absolute for v2 and v3.
/// - Signatures are compared in constant time against every configured secret (rotation).
/// - v3 timestamps more than 5 minutes from `now` (past or future) are refused.
/// - Refusals are consistent: a missing, empty, undecodable or wrong signature, or a request
///   signed only with a version this verifier does not accept, is `BadSignature` or
///   `MissingHeader` (the server answers 401). Only a request whose signature verifies but
///   whose v3 timestamp is not a number is `Malformed` (400).
#[derive(Clone)]
pub struct HubSpotWebhookVerifier {
    secrets: WebhookSecrets,
    versions: Vec<SignatureVersion>,
    sign_version: SignatureVersion,
    target_url: Option<String>,
    tolerance: Duration,
}

impl fmt::Debug for HubSpotWebhookVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSpotWebhookVerifier")
            .field("secrets", &self.secrets)
            .field("versions", &self.versions)
            .field("sign_version", &self.sign_version)
            .field(
                "target_url",
                &self
                    .target_url
                    .as_deref()
                    .map(apex_connect_core::error::redact_url),
            )
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl HubSpotWebhookVerifier {
    /// A verifier accepting v3, v2 and v1 with `secrets` (the current client secret first),
    /// signing as v3.
    pub fn new(secrets: WebhookSecrets) -> Self {
        HubSpotWebhookVerifier {
            secrets,
            versions: vec![
                SignatureVersion::V3,
                SignatureVersion::V2,
                SignatureVersion::V1,
            ],
            sign_version: SignatureVersion::V3,
            target_url: None,
            tolerance: TOLERANCE,
        }
    }

    /// Accepts only these versions.
    pub fn with_versions(mut self, versions: impl IntoIterator<Item = SignatureVersion>) -> Self {
        self.versions = versions.into_iter().collect();
        self
    }

    /// Signs (in [`WebhookVerifier::sign`]) with `version`.
    pub fn signing(mut self, version: SignatureVersion) -> Self {
        self.sign_version = version;
        self
    }

    /// Signs and verifies against `url` (the public target URL configured in HubSpot) instead
    /// of the request's URI: its scheme, host and path, with the request's own query string
    /// (`url`'s query only when the request has none).
    pub fn with_target_url(mut self, url: impl Into<String>) -> Self {
        self.target_url = Some(url.into());
        self
    }

    fn uri(&self, request: &WebhookRequest<'_>) -> String {
        match (&self.target_url, request.uri.query()) {
            (Some(target), Some(query)) => {
                let base = target.split(['?', '#']).next().unwrap_or(target);
                format!("{base}?{query}")
            }
            (Some(target), None) => target.clone(),
            (None, _) => request.uri.to_string(),
        }
    }

    /// The signature headers of `request` at `now` with `version` and the current secret.
    ///
    /// # Errors
    /// `NoSecret` when no secret is configured.
    pub fn sign_with(
        &self,
        version: SignatureVersion,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<HeaderMap, WebhookError> {
        let secret = self.secrets.current()?;
        let mut h = HeaderMap::new();
        let uri = self.uri(request);
        let value = |s: String| {
            HeaderValue::from_str(&s)
                .map_err(|_| WebhookError::Malformed("signature header".into()))
        };
        match version {
            SignatureVersion::V1 | SignatureVersion::V2 => {
                let sig = if version == SignatureVersion::V1 {
                    v1_hex(secret, request.body)
                } else {
                    v2_hex(secret, request.method.as_str(), &uri, request.body)
                };
                h.insert(SIGNATURE_HEADER, value(sig)?);
                h.insert(
                    SIGNATURE_VERSION_HEADER,
                    HeaderValue::from_static(if version == SignatureVersion::V1 {
                        "v1"
                    } else {
                        "v2"
                    }),
                );
            }
            SignatureVersion::V3 => {
                let ts = unix_ms(now).to_string();
                let source = v3_source(request.method.as_str(), &uri, request.body, &ts);
                let mac = self.secrets.mac::<Hmac<Sha256>>(&[&source])?;
                h.insert(SIGNATURE_V3_HEADER, value(STANDARD.encode(mac))?);
                h.insert(TIMESTAMP_HEADER, value(ts)?);
            }
        }
        Ok(h)
    }

    fn verify_v3(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, WebhookError> {
        let sig = request.require_header(SIGNATURE_V3_HEADER)?;
        let ts_text = request.require_header(TIMESTAMP_HEADER)?.trim();
        // Not base64: it cannot match, a bad signature like any other.
        let expected = STANDARD
            .decode(sig.trim())
            .map_err(|_| WebhookError::BadSignature)?;
        let uri = self.uri(request);
        let signed = || {
            let source = v3_source(request.method.as_str(), &uri, request.body, ts_text);
            self.secrets
                .find_mac::<Hmac<Sha256>>(&[&source], &expected)
                .ok_or(WebhookError::BadSignature)
        };
        let Ok(ts) = ts_text.parse::<i64>() else {
            // Malformed only if it is signed; unsigned junk is a bad signature.
            signed()?;
            return Err(WebhookError::Malformed(
                "X-HubSpot-Request-Timestamp is not a number".into(),
            ));
        };
        // The cheap check first: a stale or future timestamp costs no HMAC.
        check_tolerance(ts, now, self.tolerance)?;
        let index = signed()?;
        let mut v = Verified::default();
        v.timestamp_ms = Some(ts);
        v.secret_index = index;
        Ok(v)
    }

    fn verify_v12(
        &self,
        version: SignatureVersion,
        request: &WebhookRequest<'_>,
    ) -> Result<Verified, WebhookError> {
        let sig = request.require_header(SIGNATURE_HEADER)?;
        // Empty, not hex, or not 32 bytes: it cannot match, a bad signature like any other.
        let expected = decode_hex(sig.trim()).ok_or(WebhookError::BadSignature)?;
        let uri = self.uri(request);
        let mut found = None;
        for (i, secret) in self.secrets.iter().enumerate() {
            let digest = if version == SignatureVersion::V1 {
                sha256(&[secret, request.body])
            } else {
                sha256(&[
                    secret,
                    request.method.as_str().as_bytes(),
                    uri.as_bytes(),
                    request.body,
                ])
            };
            // Check every secret (no early exit), so timing does not tell which matched.
            if bool::from(digest.ct_eq(&expected[..])) && found.is_none() {
                found = Some(i);
            }
        }
        let index = found.ok_or(WebhookError::BadSignature)?;
        let mut v = Verified::default();
        v.secret_index = index;
        Ok(v)
    }
}

impl WebhookVerifier for HubSpotWebhookVerifier {
    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<Verified, WebhookError> {
        if self.secrets.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        let accepts = |v| self.versions.contains(&v);
        if accepts(SignatureVersion::V3) && request.header(SIGNATURE_V3_HEADER).is_some() {
            return self.verify_v3(request, now);
        }
        match request.header(SIGNATURE_VERSION_HEADER).map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("v1") && accepts(SignatureVersion::V1) => {
                self.verify_v12(SignatureVersion::V1, request)
            }
            Some(v) if v.eq_ignore_ascii_case("v2") && accepts(SignatureVersion::V2) => {
                self.verify_v12(SignatureVersion::V2, request)
            }
            // No signature this verifier accepts (none, or only a version it does not take):
            // report what is missing of the preferred scheme (401 either way).
            _ if accepts(SignatureVersion::V3) => {
                Err(WebhookError::MissingHeader(SIGNATURE_V3_HEADER))
            }
            None => Err(WebhookError::MissingHeader("X-HubSpot-Signature-Version")),
            Some(_) => Err(WebhookError::BadSignature),
        }
    }

    fn sign(
        &self,
        request: &WebhookRequest<'_>,
        now: SystemTime,
    ) -> Result<HeaderMap, WebhookError> {
        self.sign_with(self.sign_version, request, now)
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let val = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (val(b[2 * i])? << 4) | val(b[2 * i + 1])?;
    }
    Some(out)
}

/// The v1 signature: lowercase hex SHA-256 of `secret + body`.
pub fn v1_hex(secret: &[u8], body: &[u8]) -> String {
    hex(&sha256(&[secret, body]))
}

/// The v2 signature: lowercase hex SHA-256 of `secret + method + uri + body`.
pub fn v2_hex(secret: &[u8], method: &str, uri: &str, body: &[u8]) -> String {
    hex(&sha256(&[secret, method.as_bytes(), uri.as_bytes(), body]))
}

/// The v3 signature: base64 HMAC-SHA256 (key `secret`) of
/// `method + decoded(uri) + body + timestamp`.
pub fn v3_base64(
    secret: &[u8],
    method: &str,
    uri: &str,
    body: &[u8],
    timestamp_ms: &str,
) -> String {
    use hmac::Mac;
    // HMAC accepts keys of any length.
    let Ok(mut mac) = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&v3_source(method, uri, body, timestamp_ms));
    STANDARD.encode(mac.finalize().into_bytes())
}

fn v3_source(method: &str, uri: &str, body: &[u8], timestamp: &str) -> Vec<u8> {
    let uri = decode_v3_uri(uri);
    let mut s = Vec::with_capacity(method.len() + uri.len() + body.len() + timestamp.len());
    s.extend_from_slice(method.as_bytes());
    s.extend_from_slice(uri.as_bytes());
    s.extend_from_slice(body);
    s.extend_from_slice(timestamp.as_bytes());
    s
}

/// Decodes the percent-encodings HubSpot's v3 documentation lists (`%3A` -> `:`, `%2F` ->
/// `/`, `%3F` -> `?`, `%40` -> `@`, `%21` -> `!`, `%24` -> `$`, `%27` -> `'`, `%28` -> `(`,
/// `%29` -> `)`, `%2A` -> `*`, `%2C` -> `,`, `%3B` -> `;`), in either hex case; every other
/// escape stays as it is.
pub fn decode_v3_uri(uri: &str) -> String {
    let b = uri.as_bytes();
    let mut out = String::with_capacity(uri.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_alphanumeric()
            && b[i + 2].is_ascii_alphanumeric()
        {
            let code = [b[i + 1].to_ascii_uppercase(), b[i + 2].to_ascii_uppercase()];
            let c = match &code {
                b"3A" => Some(':'),
                b"2F" => Some('/'),
                b"3F" => Some('?'),
                b"40" => Some('@'),
                b"21" => Some('!'),
                b"24" => Some('$'),
                b"27" => Some('\''),
                b"28" => Some('('),
                b"29" => Some(')'),
                b"2A" => Some('*'),
                b"2C" => Some(','),
                b"3B" => Some(';'),
                _ => None,
            };
            if let Some(c) = c {
                out.push(c);
                i += 3;
                continue;
            }
        }
        // Copy one UTF-8 character.
        let ch_len = uri[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&uri[i..i + ch_len]);
        i += ch_len;
    }
    out
}

fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// One event of a webhook delivery (the body is a JSON array of up to 100 of these).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct HubSpotEvent {
    /// The event id (not guaranteed unique across deliveries).
    #[serde(default, deserialize_with = "id_string")]
    pub event_id: Option<String>,
    /// `contact.creation`, `deal.propertyChange`... (older payloads: `subscriptionType`).
    #[serde(default, alias = "subscriptionType")]
    pub event_type: String,
    /// The object concerned.
    #[serde(default, deserialize_with = "id_string")]
    pub object_id: Option<String>,
    /// Generic `object.*` events: the object type id (`0-1` contacts...).
    #[serde(default)]
    pub object_type_id: Option<String>,
    /// When it happened, Unix ms.
    #[serde(default)]
    pub occurred_at: Option<i64>,
    /// The property changed (propertyChange).
    #[serde(default)]
    pub property_name: Option<String>,
    /// Its new value (propertyChange).
    #[serde(default)]
    pub property_value: Option<String>,
    /// What made the change (`CRM_UI`, `API`, `INTEGRATION`, `IMPORT`...).
    #[serde(default)]
    pub change_source: Option<String>,
    /// Who made it (`userId:123`, or an app id for integrations).
    #[serde(default, deserialize_with = "id_string")]
    pub source_id: Option<String>,
    /// The app the subscription belongs to.
    #[serde(default)]
    pub app_id: Option<u64>,
    /// The HubSpot account.
    #[serde(default)]
    pub portal_id: Option<u64>,
    /// Delivery attempt, from 0.
    #[serde(default)]
    pub attempt_number: Option<u32>,
    /// Merge: the object that remains.
    #[serde(default, deserialize_with = "id_string")]
    pub primary_object_id: Option<String>,
    /// Merge: the objects merged away.
    #[serde(default, deserialize_with = "id_list")]
    pub merged_object_ids: Vec<String>,
    /// Merge: the id of the resulting object.
    #[serde(default, deserialize_with = "id_string")]
    pub new_object_id: Option<String>,
    /// associationChange: e.g. `CONTACT_TO_COMPANY`.
    #[serde(default)]
    pub association_type: Option<String>,
    /// associationChange: from.
    #[serde(default, deserialize_with = "id_string")]
    pub from_object_id: Option<String>,
    /// associationChange: to.
    #[serde(default, deserialize_with = "id_string")]
    pub to_object_id: Option<String>,
    /// associationChange: whether the association was removed.
    #[serde(default)]
    pub association_removed: Option<bool>,
}

impl HubSpotEvent {
    /// The object type (`contact`) and action (`creation`) of the event type.
    pub fn split_type(&self) -> (&str, &str) {
        self.event_type
            .split_once('.')
            .unwrap_or((self.event_type.as_str(), ""))
    }

    /// Whether this event is the echo of a write made by app `app_id` (our own write-back).
    pub fn is_echo_of(&self, app_id: Option<u64>) -> bool {
        let Some(app) = app_id else {
            return false;
        };
        let from_integration = matches!(
            self.change_source.as_deref(),
            Some("INTEGRATION" | "API" | "APP" | "INTEGRATIONS_PLATFORM")
        );
        from_integration && self.source_id.as_deref() == Some(app.to_string().as_str())
    }
}

/// Parses a delivery body: a JSON array of events (a single object is accepted too).
///
/// # Errors
/// `InvalidInput` when the body is not JSON of that shape.
pub fn parse_events(body: &[u8]) -> apex_connect_core::Result<Vec<HubSpotEvent>> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        apex_connect_core::Error::invalid_input("webhook body is not JSON").set_source(e)
    })?;
    let v = match v {
        serde_json::Value::Array(_) => v,
        obj @ serde_json::Value::Object(_) => serde_json::Value::Array(vec![obj]),
        _ => {
            return Err(apex_connect_core::Error::invalid_input(
                "webhook body is not an array of events",
            ));
        }
    };
    serde_json::from_value(v).map_err(|e| {
        apex_connect_core::Error::invalid_input("webhook body is not HubSpot's event shape")
            .set_source(e)
    })
}

/// The inbox events of a verified HubSpot delivery (what `Webhooks::events` of `HubSpotConnector`
/// returns). A delivery is an array of up to 100 events and a retry may batch them
/// differently, so it is split: one event per array element, keyed by its `eventId` (number
/// or string), with the one-element array as body (which [`parse_events`] and so
/// `parse_webhook` accept).
///
/// The verifier's event id, when it has one, keys the whole delivery instead; an empty
/// array, an element without an `eventId`, or a single event object not in an array make one
/// event of the whole body keyed by [`apex_connect_core::body_hash`].
///
/// # Errors
/// `Malformed` when the body is not JSON, or is JSON but neither an array nor an object.
pub fn delivery_events(
    verified: &Verified,
    body: &Bytes,
) -> Result<Vec<WebhookEvent>, WebhookError> {
    if verified.event_id.is_some() {
        return Ok(vec![WebhookEvent::whole_delivery(verified, body)]);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| WebhookError::Malformed("HubSpot webhook body is not JSON".into()))?;
    let events = match value {
        serde_json::Value::Array(events) => events,
        serde_json::Value::Object(_) => {
            return Ok(vec![WebhookEvent::whole_delivery(verified, body)]);
        }
        _ => {
            return Err(WebhookError::Malformed(
                "HubSpot webhook body is not an array of events".into(),
            ));
        }
    };
    let split: Option<Vec<WebhookEvent>> = events
        .iter()
        .map(|event| {
            let id = match event.get("eventId")? {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                _ => return None,
            };
            let one = serde_json::to_vec(std::slice::from_ref(event)).ok()?;
            Some(WebhookEvent::new(id, Bytes::from(one)))
        })
        .collect();
    Ok(split
        .filter(|events| !events.is_empty())
        .unwrap_or_else(|| vec![WebhookEvent::whole_delivery(verified, body)]))
}

/// Deduplicates by `eventId` (first kept) and orders by `occurredAt` (stable: events of the
/// same object keep delivery order on equal times).
pub fn dedupe_and_order(events: Vec<HubSpotEvent>) -> Vec<HubSpotEvent> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<HubSpotEvent> = events
        .into_iter()
        .filter(|e| match &e.event_id {
            Some(id) => seen.insert(id.clone()),
            None => true,
        })
        .collect();
    out.sort_by_key(|e| e.occurred_at.unwrap_or(i64::MAX));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Uri};

    const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";

    #[test]
    fn published_vectors() {
        let body = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
        assert_eq!(
            v1_hex(SECRET.as_bytes(), body.as_bytes()),
            "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
        );
        assert_eq!(
            v1_hex(SECRET.as_bytes(), b"{'example_field':'example_value'}"),
            "69fc6631a867edd4f9e9e627fc5c1148e3fbdd8b21837b6d2b8901c1fa57f750"
        );
        let uri = "https://www.example.com/webhook_uri";
        assert_eq!(
            v2_hex(SECRET.as_bytes(), "GET", uri, b""),
            "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
        );
        assert_eq!(
            v2_hex(
                SECRET.as_bytes(),
                "POST",
                uri,
                br#"{"example_field":"example_value"}"#
            ),
            "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
        );
        assert_eq!(
            v2_hex(
                SECRET.as_bytes(),
                "POST",
                uri,
                b"{'example_field':'example_value'}"
            ),
            "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383"
        );
        assert_eq!(
            v3_base64(
                SECRET.as_bytes(),
                "POST",
                uri,
                b"{'example_field':'example_value'}",
                "1693657560000"
            ),
            "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="
        );
    }

    #[test]
    fn uri_decoding_table() {
        assert_eq!(
            decode_v3_uri(
                "https://h.example/a%3Ab%2fc?x=%40y%21%24%27%28%29%2A%2C%3B%3F&z=%20%E2%82%AC"
            ),
            "https://h.example/a:b/c?x=@y!$'()*,;?&z=%20%E2%82%AC"
        );
        assert_eq!(decode_v3_uri("/p%3"), "/p%3");
        assert_eq!(decode_v3_uri("/é%3a"), "/é:");
    }

    #[test]
    fn verifier_checks_versions() {
        let v = HubSpotWebhookVerifier::new(WebhookSecrets::single(SECRET));
        let m = Method::POST;
        let u: Uri = "https://www.example.com/webhook_uri".parse().unwrap();
        let body = b"{'example_field':'example_value'}";
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_693_657_560_000);
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_V3_HEADER,
            HeaderValue::from_static("K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="),
        );
        h.insert(TIMESTAMP_HEADER, HeaderValue::from_static("1693657560000"));
        let ok = v
            .verify(&WebhookRequest::new(&m, &u, &h, body), now)
            .unwrap();
        assert_eq!(ok.timestamp_ms, Some(1_693_657_560_000));
        let mut h = HeaderMap::new();
        h.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_static(
                "4fe4e3a7d3cf09db53be39d0a58130e2aaba074ec123a9e355b876a689a1c383",
            ),
        );
        h.insert(SIGNATURE_VERSION_HEADER, HeaderValue::from_static("v2"));
        v.verify(&WebhookRequest::new(&m, &u, &h, body), now)
            .unwrap();
        h.insert(SIGNATURE_VERSION_HEADER, HeaderValue::from_static("v1"));
        assert_eq!(
            v.verify(&WebhookRequest::new(&m, &u, &h, body), now)
                .unwrap_err(),
            WebhookError::BadSignature
        );
    }

    #[test]
    fn events_parse_dedupe_and_order() {
        let body = br#"[
          {"objectId":1246965,"propertyName":"lifecyclestage","propertyValue":"subscriber","changeSource":"ACADEMY",
           "eventId":3816279340,"subscriptionId":25,"portalId":33,"appId":1160452,"occurredAt":1462216307945,
           "eventType":"contact.propertyChange","attemptNumber":0},
          {"objectId":1246978,"changeSource":"IMPORT","eventId":3816279480,"subscriptionId":22,"portalId":33,
           "appId":1160452,"occurredAt":1462216307940,"subscriptionType":"contact.creation","attemptNumber":0},
          {"objectId":1246978,"changeSource":"IMPORT","eventId":3816279480,"subscriptionId":22,"portalId":33,
           "appId":1160452,"occurredAt":1462216307940,"subscriptionType":"contact.creation","attemptNumber":1}
        ]"#;
        let ev = dedupe_and_order(parse_events(body).unwrap());
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event_type, "contact.creation");
        assert_eq!(ev[0].object_id.as_deref(), Some("1246978"));
        assert_eq!(ev[1].split_type(), ("contact", "propertyChange"));
        assert!(parse_events(b"{\"x\":").is_err());
        let echo: HubSpotEvent = serde_json::from_value(serde_json::json!({
            "eventType": "contact.propertyChange", "changeSource": "INTEGRATION", "sourceId": "777"
        }))
        .unwrap();
        assert!(echo.is_echo_of(Some(777)));
        assert!(!echo.is_echo_of(Some(778)));
        assert!(!echo.is_echo_of(None));
    }

    #[test]
    fn deliveries_split_per_event_id_into_parseable_one_element_arrays() {
        let body = Bytes::from_static(
            br#"[{"eventId":11,"subscriptionType":"contact.creation","objectId":1},
                 {"eventId":"12","eventType":"deal.deletion","objectId":2},
                 {"eventId":13,"subscriptionType":"company.propertyChange","objectId":3,"propertyName":"name","propertyValue":"Acme"}]"#,
        );
        let events = delivery_events(&Verified::default(), &body).unwrap();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["11", "12", "13"]);
        let whole = parse_events(&body).unwrap();
        for (event, expected) in events.iter().zip(&whole) {
            let v: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
            assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
            assert_eq!(parse_events(&event.body).unwrap(), vec![expected.clone()]);
        }
    }

    #[test]
    fn unsplittable_deliveries_are_one_event_and_malformed_bodies_are_refused() {
        // No id on some element, an empty array, a lone object: the whole body, by its hash.
        for body in [
            Bytes::from_static(br#"[{"eventId":1},{"objectId":2}]"#),
            Bytes::from_static(b"[]"),
            Bytes::from_static(br#"{"eventId":1,"objectId":2}"#),
        ] {
            let events = delivery_events(&Verified::default(), &body).unwrap();
            assert_eq!(
                events,
                vec![WebhookEvent::new(
                    apex_connect_core::body_hash(&body),
                    body.clone()
                )]
            );
        }
        // The verifier's id, when the scheme has one, keys the whole delivery.
        let mut v = Verified::default();
        v.event_id = Some("msg_1".into());
        let body = Bytes::from_static(br#"[{"eventId":1},{"eventId":2}]"#);
        assert_eq!(
            delivery_events(&v, &body).unwrap(),
            vec![WebhookEvent::new("msg_1", body)]
        );
        for body in [&b"[{\"eventId\":1"[..], b"not json", b"42", b"\"x\""] {
            assert!(
                matches!(
                    delivery_events(&Verified::default(), &Bytes::copy_from_slice(body)),
                    Err(WebhookError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..72),
                any::<i64>().prop_map(|n| n.to_string().into_bytes()),
                vec(any::<u8>(), 0..40).prop_map(|b| STANDARD.encode(b).into_bytes()),
                vec(any::<u8>(), 32).prop_map(|b| hex(&b).into_bytes()),
                prop_oneof![Just("v1"), Just("v2"), Just("V3"), Just("")]
                    .prop_map(|v| v.as_bytes().to_vec()),
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

        const URIS: [&str; 3] = [
            "https://www.example.com/webhook_uri",
            "/webhooks/hubspot/acme?portalId=1&x=%3A%zz",
            "https://h.example/%E2%82%AC/%3a?%",
        ];

        proptest! {
            #[test]
            fn arbitrary_requests_never_panic(
                sig in header_bytes(),
                version in header_bytes(),
                sig3 in header_bytes(),
                ts in header_bytes(),
                body in vec(any::<u8>(), 0..128),
                uri in 0usize..3,
                target in any::<bool>(),
                now_ms in 0u64..(1 << 50),
            ) {
                let mut v = HubSpotWebhookVerifier::new(WebhookSecrets::single(SECRET));
                if target {
                    v = v.with_target_url("https://hooks.example.com/hs?old=1");
                }
                let mut h = HeaderMap::new();
                for (name, value) in [
                    (SIGNATURE_HEADER, &sig),
                    (SIGNATURE_VERSION_HEADER, &version),
                    (SIGNATURE_V3_HEADER, &sig3),
                    (TIMESTAMP_HEADER, &ts),
                ] {
                    if let Ok(value) = HeaderValue::from_bytes(value) {
                        h.insert(name, value);
                    }
                }
                let u: Uri = URIS[uri].parse().unwrap();
                let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
                if let Ok(ok) = v.verify(&WebhookRequest::new(&Method::POST, &u, &h, &body), now) {
                    let _ = delivery_events(&ok, &Bytes::from(body.clone()));
                }
                let _ = delivery_events(&Verified::default(), &Bytes::from(body));
            }

            #[test]
            fn a_mutated_body_never_verifies(
                body in vec(any::<u8>(), 0..128),
                kind in any::<u8>(),
                pos in any::<usize>(),
                flip in any::<u8>(),
                uri in 0usize..3,
                now_ms in 0u64..(1 << 45),
            ) {
                let v = HubSpotWebhookVerifier::new(WebhookSecrets::single(SECRET));
                let u: Uri = URIS[uri].parse().unwrap();
                let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
                let other = mutate(&body, kind, pos, flip);
                for version in [SignatureVersion::V1, SignatureVersion::V2, SignatureVersion::V3] {
                    let h = v
                        .sign_with(version, &WebhookRequest::new(&Method::POST, &u, &HeaderMap::new(), &body), now)
                        .unwrap();
                    prop_assert!(v.verify(&WebhookRequest::new(&Method::POST, &u, &h, &body), now).is_ok());
                    prop_assert_eq!(
                        v.verify(&WebhookRequest::new(&Method::POST, &u, &h, &other), now),
                        Err(WebhookError::BadSignature),
                        "{:?}", version
                    );
                }
            }
        }
    }
}
