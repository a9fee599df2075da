//! The resolution policy: phone regions, what merges what, cross-platform id fields, and how
//! conflicting field values are settled.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::key::KeyKind;
use crate::normalize::{Normalizer, Region};

/// How source entities are resolved into canonical entities, and how the canonical value of a
/// field is chosen. Deserializes from a config file (all fields optional):
///
/// ```
/// # use apex_connect_identity::Policy;
/// let policy: Policy = serde_json::from_value(serde_json::json!({
///     "default_region": "US",
///     "regions": { "acme-front-uk": "GB" },
///     "source_priority": ["salesforce", "hubspot/acme-hs", "hubspot", "frontapp"],
///     "field_priority": { "name": ["hubspot", "salesforce"] },
///     "external_ids": [{
///         "platform": "salesforce", "object_type": "contact",
///         "field": "custom_fields.HubSpot_Contact_ID__c",
///         "target_platform": "hubspot", "target_object_type": "contact"
///     }]
/// })).unwrap();
/// assert_eq!(policy.region_for("acme-front-uk").unwrap().code(), "GB");
/// ```
///
/// Changing the normalization settings (regions, generic or subaddress domains, merge kinds,
/// external ids) changes the keys of entities written afterwards only: re-sync (or re-drive) the
/// connections to re-key what is stored. The field policy applies at query time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Policy {
    /// The region of phone numbers written without an international prefix, per connection.
    pub regions: BTreeMap<String, Region>,
    /// The region for connections not in `regions`. `None`: such numbers are no identity.
    pub default_region: Option<Region>,
    /// Sources in order of trust for every field: `"platform"` or `"platform/connection"`.
    /// Sources not listed come after the listed ones. Ties go to the most recent value.
    pub source_priority: Vec<String>,
    /// Per-field overrides of `source_priority`, keyed by field path (`name`,
    /// `attributes.<name>`, `custom_fields.<name>`).
    pub field_priority: BTreeMap<String, Vec<String>>,
    /// Fields that hold another platform's record id.
    pub external_ids: Vec<ExternalIdRule>,
    /// Domains to treat as generic in addition to [`crate::normalize::GENERIC_DOMAINS`].
    pub generic_domains: Vec<String>,
    /// Domains whose provider documents `+tag` subaddressing, in addition to
    /// [`crate::normalize::SUBADDRESS_DOMAINS`].
    pub subaddress_domains: Vec<String>,
    /// Which identity kinds merge which entity kinds.
    pub merge_on: MergeOn,
    /// Refuse a merge that rests on phone numbers alone when both sides have emails at a
    /// shared domain but no email in common (colleagues behind one switchboard, a family's
    /// landline). Default `true`.
    pub phone_guard: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            regions: BTreeMap::new(),
            default_region: None,
            source_priority: Vec::new(),
            field_priority: BTreeMap::new(),
            external_ids: ExternalIdRule::hubspot_salesforce(),
            generic_domains: Vec::new(),
            subaddress_domains: Vec::new(),
            merge_on: MergeOn::default(),
            phone_guard: true,
        }
    }
}

impl Policy {
    /// The phone region of `connection`.
    pub fn region_for(&self, connection: &str) -> Option<Region> {
        self.regions
            .get(connection)
            .copied()
            .or(self.default_region)
    }

    /// Sets the default phone region.
    pub fn with_default_region(mut self, region: Region) -> Self {
        self.default_region = Some(region);
        self
    }

    /// Sets the phone region of one connection.
    pub fn with_region(mut self, connection: impl Into<String>, region: Region) -> Self {
        self.regions.insert(connection.into(), region);
        self
    }

    /// Sets the source priority (`"platform"` or `"platform/connection"`, most trusted first).
    pub fn with_source_priority<I, S>(mut self, sources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.source_priority = sources.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the source priority of one field.
    pub fn with_field_priority<I, S>(mut self, field: impl Into<String>, sources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.field_priority
            .insert(field.into(), sources.into_iter().map(Into::into).collect());
        self
    }

    /// Adds an external-id rule.
    pub fn with_external_id(mut self, rule: ExternalIdRule) -> Self {
        self.external_ids.push(rule);
        self
    }

    /// The rank of a source for `field` (lower is more trusted; unlisted sources rank last).
    pub fn rank(&self, field: &str, platform: &str, connection: &str) -> usize {
        let list = self
            .field_priority
            .get(field)
            .unwrap_or(&self.source_priority);
        list.iter()
            .position(|s| match s.split_once('/') {
                Some((p, c)) => p == platform && c == connection,
                None => s == platform,
            })
            .unwrap_or(list.len())
    }

    /// The normalizer these settings describe.
    pub fn normalizer(&self) -> Normalizer {
        Normalizer::default()
            .with_generic_domains(&self.generic_domains)
            .with_subaddress_domains(&self.subaddress_domains)
    }

    pub(crate) fn compile(self) -> Arc<Compiled> {
        let normalizer = self.normalizer();
        Arc::new(Compiled {
            normalizer,
            policy: self,
        })
    }
}

/// A policy with its normalizer built once.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) policy: Policy,
    pub(crate) normalizer: Normalizer,
}

impl Compiled {
    /// Whether records of (platform, object type) are pointed at by an external-id rule: they
    /// then carry their own id as a key.
    pub(crate) fn is_target(&self, platform: &str, object_type: &str) -> bool {
        self.policy.external_ids.iter().any(|r| {
            r.target_platform == platform && r.target_object_type.eq_ignore_ascii_case(object_type)
        })
    }
}

/// Which identity kinds merge which entity kinds. Identities of other kinds are kept as weak
/// keys (findable, never merging).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MergeOn {
    /// People. Default: email, phone, handle, external.
    pub person: Vec<KeyKind>,
    /// Organizations. Default: domain, external (not phone: subsidiaries and shared offices
    /// share switchboards).
    pub organization: Vec<KeyKind>,
    /// Every other kind (deals, conversations, ...). Default: external.
    pub other: Vec<KeyKind>,
}

impl Default for MergeOn {
    fn default() -> Self {
        MergeOn {
            person: vec![
                KeyKind::Email,
                KeyKind::Phone,
                KeyKind::Handle,
                KeyKind::External,
            ],
            organization: vec![KeyKind::Domain, KeyKind::External],
            other: vec![KeyKind::External],
        }
    }
}

impl MergeOn {
    /// Whether `key` merges entities of `kind` (the stored kind name).
    pub fn merges(&self, kind: &str, key: KeyKind) -> bool {
        match kind {
            "person" => self.person.contains(&key),
            "organization" => self.organization.contains(&key),
            _ => self.other.contains(&key),
        }
    }
}

/// A field of one platform's records that holds the id of a record on another platform
/// (HubSpot's `salesforcecontactid`): the two records are one entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ExternalIdRule {
    /// The platform of the records carrying the field.
    pub platform: String,
    /// Their object type (`None`: every object type of the platform).
    #[serde(default)]
    pub object_type: Option<String>,
    /// The field: `custom_fields.<name>`, `attributes.<name>` (names compare
    /// case-insensitively, as Salesforce API names do) or `handle.<source>` (an
    /// `Identity::Handle` of that source).
    pub field: String,
    /// The platform the id belongs to.
    pub target_platform: String,
    /// The object type it names there.
    pub target_object_type: String,
}

impl ExternalIdRule {
    /// A rule: `field` of `platform`/`object_type` records names a `target_platform`
    /// `target_object_type` record.
    pub fn new(
        platform: impl Into<String>,
        object_type: Option<&str>,
        field: impl Into<String>,
        target_platform: impl Into<String>,
        target_object_type: impl Into<String>,
    ) -> Self {
        ExternalIdRule {
            platform: platform.into(),
            object_type: object_type.map(str::to_string),
            field: field.into(),
            target_platform: target_platform.into(),
            target_object_type: target_object_type.into(),
        }
    }

    /// The properties HubSpot's Salesforce integration keeps on synced records:
    /// `salesforcecontactid` and `salesforceleadid` on contacts, `salesforceaccountid` on
    /// companies, `salesforceopportunityid` on deals (HubSpot exposes them as ordinary
    /// properties; the HubSpot connector keeps them among the custom fields).
    pub fn hubspot_salesforce() -> Vec<ExternalIdRule> {
        vec![
            ExternalIdRule::new(
                "hubspot",
                Some("contact"),
                "custom_fields.salesforcecontactid",
                "salesforce",
                "contact",
            ),
            ExternalIdRule::new(
                "hubspot",
                Some("contact"),
                "custom_fields.salesforceleadid",
                "salesforce",
                "lead",
            ),
            ExternalIdRule::new(
                "hubspot",
                Some("company"),
                "custom_fields.salesforceaccountid",
                "salesforce",
                "account",
            ),
            ExternalIdRule::new(
                "hubspot",
                Some("deal"),
                "custom_fields.salesforceopportunityid",
                "salesforce",
                "opportunity",
            ),
        ]
    }

    pub(crate) fn applies_to(&self, platform: &str, object_type: &str) -> bool {
        self.platform == platform
            && self
                .object_type
                .as_deref()
                .is_none_or(|t| t.eq_ignore_ascii_case(object_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_field_then_source_priority() {
        let p = Policy::default()
            .with_source_priority(["salesforce", "hubspot/hs-eu", "hubspot"])
            .with_field_priority("name", ["frontapp"]);
        assert_eq!(p.rank("attributes.title", "salesforce", "sf"), 0);
        assert_eq!(p.rank("attributes.title", "hubspot", "hs-eu"), 1);
        assert_eq!(p.rank("attributes.title", "hubspot", "hs-us"), 2);
        assert_eq!(p.rank("attributes.title", "frontapp", "f"), 3);
        assert_eq!(p.rank("name", "frontapp", "f"), 0);
        assert_eq!(p.rank("name", "salesforce", "sf"), 1);
    }

    #[test]
    fn policy_deserializes_and_refuses_unknown_fields() {
        let p: Policy = serde_json::from_str(r#"{"default_region":"us"}"#).unwrap();
        assert_eq!(p.default_region.unwrap().code(), "US");
        assert_eq!(p.external_ids, ExternalIdRule::hubspot_salesforce());
        assert!(serde_json::from_str::<Policy>(r#"{"regoins":{}}"#).is_err());
        assert!(serde_json::from_str::<Policy>(r#"{"default_region":"XX"}"#).is_err());
    }
}
