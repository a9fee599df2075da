//! Opaque, versioned cursor tokens and the typed cursors behind them.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// An opaque cursor: where a stream stopped. Hosts store it as a string and never parse it.
///
/// The text form is `<kind>.v<version>.<base64url(JSON)>`, where `kind` names the cursor type
/// (for example `frontapp.events`) and `version` its layout. A token of another kind, or of a
/// version the connector does not know, is refused with [`ErrorKind::InvalidInput`] instead of
/// being misread.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CursorToken(String);

impl CursorToken {
    /// Encodes a typed cursor.
    pub fn encode<C: SyncCursor>(cursor: &C) -> CursorToken {
        // Serializing a plain data cursor to JSON cannot fail for the derive-generated impls
        // used by cursors; fall back to `null` rather than panic if a custom impl does.
        let json = serde_json::to_vec(cursor).unwrap_or_else(|_| b"null".to_vec());
        CursorToken(format!(
            "{}.v{}.{}",
            C::KIND,
            C::VERSION,
            URL_SAFE_NO_PAD.encode(json)
        ))
    }

    /// Decodes a typed cursor, checking its kind and version.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the token is malformed, of another kind, of an unknown
    /// version, or its payload does not fit `C`.
    pub fn decode<C: SyncCursor>(&self) -> Result<C> {
        let bad = |why: &'static str| {
            Error::new(ErrorKind::InvalidInput, why)
                .with_context("cursor_kind", C::KIND)
                .with_context("expected_version", C::VERSION)
        };
        let (kind, version, payload) =
            split_token(&self.0).ok_or_else(|| bad("cursor token is malformed"))?;
        if kind != C::KIND {
            return Err(bad("cursor token belongs to another stream or connector")
                .with_context("token_kind", kind));
        }
        if version > C::VERSION {
            return Err(
                bad("cursor token comes from a newer version of this connector")
                    .with_context("token_version", version),
            );
        }
        if version < C::VERSION {
            return C::upgrade(version, payload).ok_or_else(|| {
                bad("cursor token comes from an older, unsupported version")
                    .with_context("token_version", version)
            });
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|e| bad("cursor token payload is not base64url").set_source(e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| bad("cursor token payload does not fit the cursor type").set_source(e))
    }

    /// The token as text, for storage.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a stored token. No validation happens until [`CursorToken::decode`].
    pub fn from_string(s: impl Into<String>) -> Self {
        CursorToken(s.into())
    }

    /// The kind named in the token, if it is well formed.
    pub fn kind(&self) -> Option<&str> {
        split_token(&self.0).map(|(k, _, _)| k)
    }
}

fn split_token(s: &str) -> Option<(&str, u32, &str)> {
    // Search from the right for ".v<digits>." so kinds with dots work.
    let mut search_end = s.len();
    while let Some(dot) = s[..search_end].rfind(".v") {
        let after = &s[dot + 2..];
        if let Some(end) = after.find('.') {
            let digits = &after[..end];
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                let version = digits.parse().ok()?;
                return Some((&s[..dot], version, &after[end + 1..]));
            }
        }
        search_end = dot;
    }
    None
}

impl fmt::Debug for CursorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CursorToken").field(&self.0).finish()
    }
}

impl fmt::Display for CursorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A platform's typed cursor. Turned into an opaque [`CursorToken`] at the boundary.
///
/// # Behavior
/// - `to_token` then `from_token` gives back an equal cursor.
/// - A token of another `KIND` or a newer `VERSION` is refused with `InvalidInput`.
/// - A token of an older version goes through [`SyncCursor::upgrade`]; by default it is refused.
pub trait SyncCursor: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync {
    /// A stable name for the cursor type, e.g. `"frontapp.events"`.
    const KIND: &'static str;
    /// The layout version; bump it when the serialized shape changes.
    const VERSION: u32;

    /// Encodes the cursor.
    fn to_token(&self) -> CursorToken {
        CursorToken::encode(self)
    }

    /// Decodes a cursor.
    ///
    /// # Errors
    /// See [`CursorToken::decode`].
    fn from_token(token: &CursorToken) -> Result<Self> {
        token.decode()
    }

    /// Converts a token payload of an older `version` into this cursor, or `None` if that
    /// version cannot be upgraded. The payload is the base64url-encoded JSON part.
    fn upgrade(version: u32, payload: &str) -> Option<Self> {
        let _ = (version, payload);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct C1 {
        after: i64,
        last_id: String,
    }
    impl SyncCursor for C1 {
        const KIND: &'static str = "test.c";
        const VERSION: u32 = 2;
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Other {
        page: u32,
    }
    impl SyncCursor for Other {
        const KIND: &'static str = "test.other";
        const VERSION: u32 = 1;
    }

    #[test]
    fn roundtrip() {
        let c = C1 {
            after: 42,
            last_id: "x.v1.y".into(),
        };
        let t = c.to_token();
        assert!(t.as_str().starts_with("test.c.v2."));
        assert_eq!(t.kind(), Some("test.c"));
        assert_eq!(C1::from_token(&t).unwrap(), c);
    }

    #[test]
    fn wrong_kind_and_versions_are_invalid_input() {
        let t = Other { page: 1 }.to_token();
        let e = C1::from_token(&t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("another stream"), "{e}");

        let newer = CursorToken::from_string(t.as_str().replace("test.other.v1.", "test.c.v9."));
        let e = C1::from_token(&newer).unwrap_err();
        assert!(e.to_string().contains("newer version"), "{e}");

        let older = CursorToken::from_string(t.as_str().replace("test.other.v1.", "test.c.v1."));
        let e = C1::from_token(&older).unwrap_err();
        assert!(e.to_string().contains("older"), "{e}");

        for junk in ["", "abc", "test.c.v2.!!!", "test.c.v2.e30"] {
            let e = C1::from_token(&CursorToken::from_string(junk)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{junk}");
        }
    }
}
