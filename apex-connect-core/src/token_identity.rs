//! The identity a token endpoint vouches for (Salesforce's `id`, `issued_at` and `signature`),
//! kept with the token set so a connector can check the answer was not altered.
//!
//! Salesforce signs every token answer (authorization code, refresh, client credentials):
//! `signature` is the Base64 HMAC-SHA256, keyed with the client secret, of the identity URL
//! `id` followed by `issued_at`, both exactly as sent. Core keeps the three values verbatim;
//! the platform crate verifies them (it knows the client secret and what to do on mismatch).

use serde::{Deserialize, Serialize};

/// The identity fields of a token answer, verbatim (none of them is a secret: the identity URL
/// names the org and the user, the signature is a MAC of public values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenIdentity {
    /// The identity URL (`https://login.salesforce.com/id/<orgId>/<userId>`).
    pub id: String,
    /// `issued_at` exactly as sent (a number is kept as its JSON text): seconds or
    /// milliseconds, signed as text.
    pub issued_at: String,
    /// The server's signature over `id` + `issued_at`, when it sent one.
    pub signature: Option<String>,
}

impl TokenIdentity {
    /// Identity fields from their values.
    pub fn new(
        id: impl Into<String>,
        issued_at: impl Into<String>,
        signature: Option<String>,
    ) -> Self {
        TokenIdentity {
            id: id.into(),
            issued_at: issued_at.into(),
            signature,
        }
    }

    /// The fields of a token answer, when it has an `id` and an `issued_at` (a string or a
    /// number; anything else is ignored).
    pub fn from_answer(
        id: Option<&serde_json::Value>,
        issued_at: Option<&serde_json::Value>,
        signature: Option<&serde_json::Value>,
    ) -> Option<Self> {
        let id = id?.as_str()?.to_string();
        let issued_at = match issued_at? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let signature = signature
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        Some(TokenIdentity {
            id,
            issued_at,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_strings_and_numbers_verbatim() {
        let t = TokenIdentity::from_answer(
            Some(&json!("https://login/id/00D/005")),
            Some(&json!(1726235737296_i64)),
            Some(&json!("c2ln")),
        )
        .unwrap();
        assert_eq!(t.issued_at, "1726235737296");
        assert_eq!(t.signature.as_deref(), Some("c2ln"));
        let t = TokenIdentity::from_answer(Some(&json!("x")), Some(&json!("17")), None).unwrap();
        assert_eq!(t.issued_at, "17");
        assert!(t.signature.is_none());
        assert!(TokenIdentity::from_answer(Some(&json!(1)), Some(&json!("1")), None).is_none());
        assert!(TokenIdentity::from_answer(Some(&json!("x")), Some(&json!([1])), None).is_none());
        assert!(TokenIdentity::from_answer(None, Some(&json!("1")), None).is_none());
    }
}
