//! Google service-account keys: the JSON file Google hands out for a service account, used
//! for the JWT-bearer grant (GA4, other Google APIs).
//!
//! A connection keeps the whole file as one secret, [`SERVICE_ACCOUNT_SECRET`]
//! (`service_account_json`). [`expand`] turns it into what [`crate::platform::resolve_auth`]
//! reads for JWT bearer: `client_id` = `client_email` (the assertion's issuer), `token_url` and
//! `jwt_audience` = `token_uri`, `jwt_key_id` = `private_key_id`, and the `private_key` secret
//! = the key's PEM. Settings the connection sets itself win; an explicit `private_key` secret
//! means the file is not used at all.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::platform::{AuthMode, Secrets, Settings};

/// The secret holding a Google service-account key file (JSON).
pub const SERVICE_ACCOUNT_SECRET: &str = "service_account_json";

/// The fields of a service-account key file the JWT-bearer grant needs. `Debug` never shows
/// the private key.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceAccountKey {
    /// `client_email`: the assertion's issuer (`iss`).
    pub client_email: String,
    /// `private_key`: the RSA private key, PEM.
    pub private_key: SecretString,
    /// `private_key_id`: the JWT `kid` header.
    pub private_key_id: Option<String>,
    /// `token_uri`: the token endpoint (and the assertion's `aud`).
    pub token_uri: Option<String>,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"[redacted]")
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Reads a key file.
    ///
    /// # Errors
    /// `Config` when the text is not JSON, is another kind of credential file (`"type"` other
    /// than `service_account`), or lacks `client_email` or `private_key`. The message never
    /// shows the file's content.
    pub fn parse(json: &str) -> Result<Self> {
        // serde_json's errors quote no input, only positions; still, drop the source.
        let file: KeyFile = serde_json::from_str(json).map_err(|e| {
            Error::config("the service-account key is not a JSON key file")
                .with_context("line", e.line())
                .with_context("column", e.column())
        })?;
        if let Some(kind) = &file.kind
            && kind != "service_account"
        {
            return Err(Error::config(
                "the key file is not a service-account key (its \"type\" is another kind)",
            )
            .with_context("type", kind));
        }
        let client_email = file
            .client_email
            .filter(|e| !e.trim().is_empty())
            .ok_or_else(|| Error::config("the service-account key has no client_email"))?;
        let private_key = file
            .private_key
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| Error::config("the service-account key has no private_key"))?;
        Ok(ServiceAccountKey {
            client_email,
            private_key: SecretString::from(private_key),
            private_key_id: file.private_key_id.filter(|k| !k.is_empty()),
            token_uri: file.token_uri.filter(|u| !u.is_empty()),
        })
    }
}

/// The settings and secrets [`crate::platform::resolve_auth`] should use when `secrets` hold
/// a service-account key file and the connection authenticates by JWT bearer (its `auth` is
/// `jwt_bearer` or unset) without an explicit `private_key` secret; `None` otherwise.
///
/// # Errors
/// `Config` for a key file that does not read (see [`ServiceAccountKey::parse`]).
pub fn expand(settings: &Settings, secrets: &Secrets) -> Result<Option<(Settings, Secrets)>> {
    let Some(file) = secrets.get(SERVICE_ACCOUNT_SECRET) else {
        return Ok(None);
    };
    if secrets.get("private_key").is_some() {
        return Ok(None);
    }
    let auth = settings.auth()?;
    if auth.auth.is_some_and(|m| m != AuthMode::JwtBearer) {
        return Ok(None);
    }
    let key = ServiceAccountKey::parse(file.expose_secret())
        .map_err(|e| e.with_context("secret", SERVICE_ACCOUNT_SECRET))?;
    let mut s = settings.clone();
    let mut set = |name: &str, value: Option<String>| {
        if let Some(v) = value
            && s.get(name).is_none()
        {
            s.insert(name, serde_json::Value::String(v));
        }
    };
    set("auth", Some(AuthMode::JwtBearer.as_str().to_string()));
    set("client_id", Some(key.client_email.clone()));
    set("token_url", key.token_uri.clone());
    set("jwt_audience", key.token_uri.clone());
    set("jwt_key_id", key.private_key_id.clone());
    let mut sec = secrets.clone();
    sec.insert("private_key", key.private_key);
    Ok(Some((s, sec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{
      "type": "service_account",
      "project_id": "p",
      "private_key_id": "kid-1",
      "private_key": "-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n",
      "client_email": "sync@p.iam.gserviceaccount.com",
      "client_id": "1234",
      "token_uri": "https://oauth2.googleapis.com/token"
    }"#;

    #[test]
    fn parses_a_key_file_without_showing_the_key() {
        let k = ServiceAccountKey::parse(FILE).unwrap();
        assert_eq!(k.client_email, "sync@p.iam.gserviceaccount.com");
        assert_eq!(k.private_key_id.as_deref(), Some("kid-1"));
        assert!(!format!("{k:?}").contains("SECRETKEYMATERIAL"));
        for bad in [
            "not json SECRETKEYMATERIAL",
            r#"{"type": "authorized_user", "client_email": "a", "private_key": "SECRETKEYMATERIAL"}"#,
            r#"{"type": "service_account", "private_key": "SECRETKEYMATERIAL"}"#,
            r#"{"client_email": "a@b"}"#,
        ] {
            let e = ServiceAccountKey::parse(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config);
            assert!(!format!("{e:?} {e}").contains("SECRETKEYMATERIAL"), "{e:?}");
        }
    }

    #[test]
    fn expands_into_jwt_bearer_settings_unless_overridden() {
        let secrets = Secrets::from_values([(SERVICE_ACCOUNT_SECRET, FILE)]);
        let settings =
            Settings::from_value(serde_json::json!({"property_id": "1", "jwt_key_id": "mine"}))
                .unwrap();
        let (s, sec) = expand(&settings, &secrets).unwrap().unwrap();
        assert_eq!(s.get("auth"), Some(&serde_json::json!("jwt_bearer")));
        assert_eq!(
            s.get("client_id"),
            Some(&serde_json::json!("sync@p.iam.gserviceaccount.com"))
        );
        assert_eq!(
            s.get("jwt_audience"),
            Some(&serde_json::json!("https://oauth2.googleapis.com/token"))
        );
        assert_eq!(s.get("jwt_key_id"), Some(&serde_json::json!("mine")));
        assert_eq!(s.get("property_id"), Some(&serde_json::json!("1")));
        assert!(
            sec.get("private_key")
                .unwrap()
                .expose_secret()
                .contains("SECRETKEYMATERIAL")
        );
        // Expanded once: the result does not expand again.
        assert!(expand(&s, &sec).unwrap().is_none());
        // A user OAuth connection ignores the file.
        let oauth = Settings::from_value(serde_json::json!({"auth": "oauth"})).unwrap();
        assert!(expand(&oauth, &secrets).unwrap().is_none());
        // No file: nothing to do.
        assert!(expand(&settings, &Secrets::new()).unwrap().is_none());
        // A broken file is a Config error naming the secret.
        let broken = Secrets::from_values([(SERVICE_ACCOUNT_SECRET, "{")]);
        let e = expand(&settings, &broken).unwrap_err();
        assert_eq!(e.context_value("secret"), Some(SERVICE_ACCOUNT_SECRET));
    }
}
