//! `#[serde(with = ...)]` helpers for [`SecretString`](secrecy::SecretString) fields of configurations and token sets
//! that are stored encrypted or read from files. They expose the secret to the serializer on
//! purpose; `Debug` of the containing types must still redact it.
//!
//! ```
//! use secrecy::SecretString;
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Config {
//!     #[serde(with = "apex_connect_core::serde_secret::option", default)]
//!     api_token: Option<SecretString>,
//! }
//! ```

/// For `SecretString` fields.
pub mod string {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes the secret as a plain string.
    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose_secret())
    }

    /// Deserializes a plain string into a secret.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SecretString, D::Error> {
        Ok(SecretString::from(String::deserialize(de)?))
    }
}

/// For `Option<SecretString>` fields.
pub mod option {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes the secret as a plain string, or `null`.
    pub fn serialize<S: Serializer>(s: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
        match s {
            Some(s) => ser.serialize_some(s.expose_secret()),
            None => ser.serialize_none(),
        }
    }

    /// Deserializes an optional plain string into a secret.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(de)?.map(SecretString::from))
    }
}

/// For `Vec<SecretString>` fields (several secrets during a rotation).
pub mod vec {
    use secrecy::{ExposeSecret, SecretString};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes the secrets as a list of plain strings.
    pub fn serialize<S: Serializer>(v: &[SecretString], ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(v.len()))?;
        for s in v {
            seq.serialize_element(s.expose_secret())?;
        }
        seq.end()
    }

    /// Deserializes a list of plain strings into secrets.
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<SecretString>, D::Error> {
        Ok(Vec::<String>::deserialize(de)?
            .into_iter()
            .map(SecretString::from)
            .collect())
    }
}
