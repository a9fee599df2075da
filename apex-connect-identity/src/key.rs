//! Normalized identity keys, the values duplicate detection joins on.

use std::fmt;

use serde::{Deserialize, Serialize};

use apex_connect_core::{Error, Result};

/// What an identity key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyKind {
    /// A normalized email address (`ann@acme.com`).
    Email,
    /// A phone number in E.164 (`+14155552671`, optionally `;ext=12`).
    Phone,
    /// A registrable web domain (`acme.com`).
    Domain,
    /// A handle on some service (`twitter:annlee`).
    Handle,
    /// A record id on a platform (`salesforce/contact:003d000000AbCdE`): a cross-platform
    /// external id, or a record's own id when other records point at it.
    External,
}

impl KeyKind {
    /// The prefix used in stored keys (`email`, `phone`, `domain`, `handle`, `ext`).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Email => "email",
            KeyKind::Phone => "phone",
            KeyKind::Domain => "domain",
            KeyKind::Handle => "handle",
            KeyKind::External => "ext",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "email" => KeyKind::Email,
            "phone" => KeyKind::Phone,
            "domain" => KeyKind::Domain,
            "handle" => KeyKind::Handle,
            "ext" => KeyKind::External,
            _ => return None,
        })
    }
}

/// A normalized identity: its kind and value. Stored as `"<kind>:<value>"`
/// (`email:ann@acme.com`, `handle:twitter:annlee`, `ext:salesforce/contact:003...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdentityKey {
    /// What the key is.
    pub kind: KeyKind,
    /// The normalized value.
    pub value: String,
}

impl IdentityKey {
    /// A key of `kind` with a value that is already normalized.
    pub fn new(kind: KeyKind, value: impl Into<String>) -> Self {
        IdentityKey {
            kind,
            value: value.into(),
        }
    }

    /// The key of a record id on a platform, normalized as external ids are
    /// ([`crate::normalize::platform_id`]: Salesforce ids to their 15-character form, HubSpot
    /// ids as digits). `None` when `id` is no id of that platform.
    pub fn external(platform: &str, object_type: &str, id: &str) -> Option<Self> {
        crate::normalize::platform_id(platform, id)
            .map(|id| IdentityKey::new(KeyKind::External, format!("{platform}/{object_type}:{id}")))
    }

    /// The stored form, `"<kind>:<value>"`.
    pub fn to_stored(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.value)
    }

    /// Parses the stored form.
    ///
    /// # Errors
    /// `Storage` when the text is not a stored key.
    pub fn from_stored(s: &str) -> Result<Self> {
        let (kind, value) = s
            .split_once(':')
            .and_then(|(k, v)| KeyKind::parse(k).map(|k| (k, v)))
            .ok_or_else(|| {
                Error::storage("stored identity key has no known kind")
                    .with_context("key", s.chars().take(64).collect::<String>())
            })?;
        Ok(IdentityKey::new(kind, value))
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

/// What a key does for the source entity that asserts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyRole {
    /// Joins source entities of the same kind that share it.
    Merge,
    /// Kept and findable, but joins nothing: a role mailbox (`info@`), a generic domain on an
    /// organization, an identity kind the policy does not merge on for this entity kind.
    Weak,
    /// Links a person to the organizations that hold it as a `Merge` domain (the domain of
    /// their work email): an inferred relation, never a merge.
    Link,
}

impl KeyRole {
    /// `merge`, `weak` or `link`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Merge => "merge",
            KeyRole::Weak => "weak",
            KeyRole::Link => "link",
        }
    }

    /// Parses a stored role.
    ///
    /// # Errors
    /// `Storage` for an unknown role.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "merge" => KeyRole::Merge,
            "weak" => KeyRole::Weak,
            "link" => KeyRole::Link,
            other => {
                return Err(
                    Error::storage("stored key role is not one this version knows")
                        .with_context("role", other.chars().take(16).collect::<String>()),
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_roundtrips() {
        for k in [
            IdentityKey::new(KeyKind::Email, "ann@acme.com"),
            IdentityKey::new(KeyKind::Handle, "twitter:ann"),
            IdentityKey::new(KeyKind::External, "salesforce/contact:003000000000001"),
        ] {
            assert_eq!(IdentityKey::from_stored(&k.to_stored()).unwrap(), k);
        }
        assert!(IdentityKey::from_stored("nope").is_err());
        assert!(IdentityKey::from_stored("color:red").is_err());
        for r in [KeyRole::Merge, KeyRole::Weak, KeyRole::Link] {
            assert_eq!(KeyRole::parse(r.as_str()).unwrap(), r);
        }
    }
}
