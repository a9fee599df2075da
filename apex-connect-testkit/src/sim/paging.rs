//! Paging helpers for simulators: opaque checksummed page tokens, offset pagination, and
//! small JSON/query helpers.
//!
//! ```
//! use apex_connect_testkit::sim::paging::{paginate, page_token};
//!
//! let first = paginate(25, 10, None).unwrap();
//! assert_eq!(first.range, 0..10);
//! let second = paginate(25, 10, first.next.as_deref()).unwrap();
//! assert_eq!(second.range, 10..20);
//! let third = paginate(25, 10, second.next.as_deref()).unwrap();
//! assert_eq!((third.range, third.next), (20..25, None));
//! // A forged token is refused (the handler answers 400 with it).
//! assert!(page_token::decode::<u64>("b2Zmc2V0").is_err());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, Uri};
use serde::Serialize;

/// Opaque page tokens: `base64url(JSON payload) + "." + base64url(checksum)`.
///
/// The checksum is a truncated SHA-256 over a fixed simulator key and the payload, so a token
/// a client edited or made up is refused ([`BadToken`], answered as `400`) instead of being
/// misread, as real platforms do. It is a simulator device, not a security measure.
pub mod page_token {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use sha2::{Digest, Sha256};

    use super::BadToken;

    const KEY: &[u8] = b"apex-connect-testkit/sim/page-token/v1";

    fn checksum(payload: &[u8]) -> [u8; 12] {
        let mut h = Sha256::new();
        h.update(KEY);
        h.update((payload.len() as u64).to_be_bytes());
        h.update(payload);
        let digest = h.finalize();
        let mut out = [0u8; 12];
        out.copy_from_slice(&digest[..12]);
        out
    }

    /// Encodes `payload` (an offset, a keyset, any serializable value) as an opaque token.
    pub fn encode<T: Serialize + ?Sized>(payload: &T) -> String {
        // Serializing plain data to JSON does not fail; an exotic Serialize impl that does
        // yields the token of `null`, which decodes to an error for any non-unit type.
        let json = serde_json::to_vec(payload).unwrap_or_else(|_| b"null".to_vec());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(checksum(&json))
        )
    }

    /// Decodes a token made by [`encode`].
    ///
    /// # Errors
    /// [`BadToken`] when the token is malformed, its checksum does not match, or its payload
    /// is not a `T`.
    pub fn decode<T: DeserializeOwned>(token: &str) -> Result<T, BadToken> {
        let (payload, sum) = token
            .split_once('.')
            .ok_or(BadToken("page token is malformed"))?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| BadToken("page token is malformed"))?;
        let sum = URL_SAFE_NO_PAD
            .decode(sum)
            .map_err(|_| BadToken("page token is malformed"))?;
        if sum.as_slice() != checksum(&json).as_slice() {
            return Err(BadToken("page token is invalid"));
        }
        serde_json::from_slice(&json).map_err(|_| BadToken("page token is invalid"))
    }
}

/// A page token the simulator refuses; answers `400` with
/// `{"error":{"status":400,"message":..}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadToken(pub &'static str);

impl fmt::Display for BadToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BadToken {}

impl IntoResponse for BadToken {
    fn into_response(self) -> Response {
        error_json(StatusCode::BAD_REQUEST, self.0)
    }
}

/// One page of an offset pagination.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PageSlice {
    /// The indices of the items on this page.
    pub range: Range<usize>,
    /// The token of the next page, `None` on the last page.
    pub next: Option<String>,
}

/// Offset pagination of `total` items, `limit` per page (at least 1), after `token` (`None`:
/// the first page).
///
/// # Errors
/// [`BadToken`] for a forged or malformed token, or one pointing past the end.
pub fn paginate(total: usize, limit: usize, token: Option<&str>) -> Result<PageSlice, BadToken> {
    let limit = limit.max(1);
    let start = match token {
        None => 0,
        Some(t) => {
            let offset: u64 = page_token::decode(t)?;
            usize::try_from(offset)
                .ok()
                .filter(|o| *o <= total)
                .ok_or(BadToken("page token is out of range"))?
        }
    };
    let end = start.saturating_add(limit).min(total);
    let next = (end < total).then(|| page_token::encode(&(end as u64)));
    Ok(PageSlice {
        range: start..end,
        next,
    })
}

/// Keyset pagination over `items` sorted by `key`: the first `limit` items whose key is
/// greater than the key in `token`, and the token after the last of them.
///
/// # Errors
/// [`BadToken`] for a forged or malformed token.
pub fn paginate_keyset<'a, T, K, F>(
    items: &'a [T],
    limit: usize,
    token: Option<&str>,
    key: F,
) -> Result<(&'a [T], Option<String>), BadToken>
where
    K: Ord + Serialize + serde::de::DeserializeOwned,
    F: Fn(&T) -> K,
{
    let limit = limit.max(1);
    let start = match token {
        None => 0,
        Some(t) => {
            let after: K = page_token::decode(t)?;
            items.partition_point(|item| key(item) <= after)
        }
    };
    let end = start.saturating_add(limit).min(items.len());
    let page = &items[start..end];
    let next = match page.last() {
        Some(last) if end < items.len() => Some(page_token::encode(&key(last))),
        _ => None,
    };
    Ok((page, next))
}

/// A JSON answer with `status`.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_value(body) {
        Ok(v) => (status, Json(v)).into_response(),
        Err(_) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            "simulator body failed to serialize",
        ),
    }
}

/// The toolkit's generic error body: `{"error":{"status":..,"message":..}}` with `status`.
/// Platform simulators usually render their own shape instead.
pub fn error_json(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": {"status": status.as_u16(), "message": message}})),
    )
        .into_response()
}

/// The query parameters of `uri`, percent-decoded (the last value wins for repeated names).
pub fn query_params(uri: &Uri) -> BTreeMap<String, String> {
    let query = uri.query().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The `limit`-style parameter `name` of `params`, defaulting to `default` and capped at `max`.
///
/// # Errors
/// [`BadRequest`] (answered as `400`) when the value is not a positive integer.
pub fn limit_param(
    params: &BTreeMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, BadRequest> {
    match params.get(name) {
        None => Ok(default.min(max)),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n.min(max)),
            _ => Err(BadRequest(format!("`{name}` must be a positive integer"))),
        },
    }
}

/// A request parameter the simulator refuses; answers `400` with
/// `{"error":{"status":400,"message":..}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadRequest {}

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error_json(StatusCode::BAD_REQUEST, &self.0)
    }
}
