//! Encryption of token sets at rest: XChaCha20-Poly1305 with a random nonce per write and the
//! connection id as associated data (a ciphertext copied to another connection's row fails).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox, SecretString};

use crate::error::{Error, ErrorKind, Result};
use crate::model::ConnectionId;
use crate::token::TokenSet;

/// The environment variable [`EncryptionKey::from_env`] reads: 32 bytes, base64.
pub const ENCRYPTION_KEY_ENV: &str = "APEX_CONNECT_KEY";

/// Layout of a stored ciphertext: `[FORMAT_V1][nonce; 24][ciphertext + tag]`.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// The 32-byte key that encrypts token sets at rest. `Debug` prints `[redacted]`.
///
/// Keep it outside the database (an environment variable, a secret manager): whoever holds
/// the database file and the key holds every connection's tokens.
#[derive(Clone)]
pub struct EncryptionKey {
    bytes: Arc<SecretBox<[u8; 32]>>,
}

impl EncryptionKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EncryptionKey {
            bytes: Arc::new(SecretBox::new(Box::new(bytes))),
        }
    }

    /// A key from its base64 form (standard alphabet, padding optional; surrounding
    /// whitespace ignored).
    ///
    /// # Errors
    /// `Config` when the text is not base64 of exactly 32 bytes (the message never echoes it).
    pub fn from_base64(text: &str) -> Result<Self> {
        let trimmed = text.trim().trim_end_matches('=');
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .map_err(|_| Error::config("encryption key is not valid base64"))?,
        );
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
            Error::config("encryption key must be 32 bytes (44 characters of base64)")
                .with_context("decoded_len", decoded.len())
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key in the [`ENCRYPTION_KEY_ENV`] (`APEX_CONNECT_KEY`) environment variable.
    ///
    /// # Errors
    /// `Config` when the variable is missing or not a valid key.
    pub fn from_env() -> Result<Self> {
        let value = std::env::var(ENCRYPTION_KEY_ENV).map_err(|_| {
            Error::config("encryption key variable is not set")
                .with_context("variable", ENCRYPTION_KEY_ENV)
        })?;
        let value = Zeroizing::new(value);
        Self::from_base64(&value).map_err(|e| e.with_context("variable", ENCRYPTION_KEY_ENV))
    }

    /// A new random key (from the operating system's generator).
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(key.as_slice());
        Self::from_bytes(bytes)
    }

    /// The key as base64, to store it somewhere safe (e.g. after [`EncryptionKey::generate`]).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.bytes.expose_secret()))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.bytes.expose_secret().into())
    }

    /// Encrypts a token set for `connection` (for stores other than the built-in ones):
    /// `[format version 1][24-byte random nonce][ciphertext + tag]`, the connection id as
    /// associated data.
    ///
    /// # Errors
    /// `Unexpected` if the token set cannot be serialized.
    pub fn seal(&self, connection: &ConnectionId, tokens: &TokenSet) -> Result<Vec<u8>> {
        let plain = Zeroizing::new(serde_json::to_vec(tokens).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "token set could not be serialized").set_source(e)
        })?);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: connection.as_str().as_bytes(),
                },
            )
            .map_err(|_| Error::new(ErrorKind::Unexpected, "token set could not be encrypted"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts what [`EncryptionKey::seal`] produced for `connection`.
    ///
    /// # Errors
    /// `Config` when the key is wrong (or the ciphertext belongs to another connection, or was
    /// tampered with), or the format is unknown.
    pub fn open(&self, connection: &ConnectionId, stored: &[u8]) -> Result<TokenSet> {
        let Some((&format, rest)) = stored.split_first() else {
            return Err(
                Error::config("stored tokens are empty").with_context("connection", connection)
            );
        };
        if format != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(Error::config("stored tokens have an unknown format")
                .with_context("connection", connection)
                .with_context("format", format));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: connection.as_str().as_bytes(),
                    },
                )
                .map_err(|_| {
                    Error::config("stored tokens cannot be decrypted: wrong encryption key")
                        .with_context("connection", connection)
                })?,
        );
        serde_json::from_slice(&plain).map_err(|_| {
            Error::config("stored tokens decrypted but are not a token set")
                .with_context("connection", connection)
        })
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_wrong_key() {
        let k = EncryptionKey::generate();
        let c = ConnectionId::from("c1");
        let t = TokenSet::bearer("sekrit").with_refresh_token("r");
        let sealed = k.seal(&c, &t).unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        let back = k.open(&c, &sealed).unwrap();
        assert!(back.same_access_token(&t));
        // nonce is random per write
        assert_ne!(sealed, k.seal(&c, &t).unwrap());

        let e = EncryptionKey::generate().open(&c, &sealed).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.message().contains("wrong encryption key"), "{e}");
        // moved to another connection: refused
        let e = k.open(&ConnectionId::from("c2"), &sealed).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        // garbage and truncated input: errors, not panics
        for junk in [&[][..], &[1u8][..], &[2u8; 40][..], &sealed[..30]] {
            assert_eq!(k.open(&c, junk).unwrap_err().kind(), ErrorKind::Config);
        }
    }

    #[test]
    fn base64_and_debug() {
        let k = EncryptionKey::generate();
        let text = k.to_base64();
        let k2 = EncryptionKey::from_base64(text.expose_secret()).unwrap();
        let c = ConnectionId::from("c");
        let sealed = k.seal(&c, &TokenSet::bearer("x")).unwrap();
        assert!(k2.open(&c, &sealed).is_ok());
        assert_eq!(format!("{k:?}"), "EncryptionKey([redacted])");
        assert_eq!(
            EncryptionKey::from_base64("c2hvcnQ=").unwrap_err().kind(),
            ErrorKind::Config
        );
        assert_eq!(
            EncryptionKey::from_base64("not base64!")
                .unwrap_err()
                .kind(),
            ErrorKind::Config
        );
    }
}
