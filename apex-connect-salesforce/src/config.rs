//! The connection settings of a Salesforce connection ([`SalesforceSettings`], typed and
//! strict) and how they resolve to hosts, durations and limits.

use std::collections::BTreeMap;
use std::time::Duration;

use apex_connect_core::{Error, Result};
use serde::{Deserialize, Serialize};
use url::Url;

/// The API version used when the settings name none (Summer '25; every org supports it).
pub const DEFAULT_API_VERSION: &str = "64.0";

/// The objects synced when the settings name none.
pub const DEFAULT_OBJECTS: &[&str] = &[
    "Account",
    "Contact",
    "Lead",
    "Opportunity",
    "OpportunityHistory",
    "User",
    "Task",
    "Event",
];

/// Host patterns an `instance_url` may have (besides loopback, for simulators, and the login
/// host itself): Salesforce's production, sandbox, government and China domains.
pub const DEFAULT_INSTANCE_HOSTS: &[&str] = &[
    "*.salesforce.com",
    "*.force.com",
    "*.cloudforce.com",
    "*.salesforce.mil",
    "*.sfcrmproducts.cn",
];

/// How deletes are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeleteMode {
    /// `queryAll` with `IsDeleted = TRUE` (objects without `IsDeleted` fall back to
    /// `getDeleted`).
    #[default]
    QueryAll,
    /// The replication API's `getDeleted` (15 days of history, even after the recycle bin
    /// was emptied).
    GetDeleted,
    /// Both, for orgs that empty the recycle bin often.
    Both,
    /// No delete detection.
    None,
}

/// The typed settings of a Salesforce connection (every key optional). The shared
/// authentication settings (`auth`, `client_id`, `jwt_subject`, ...) are read by core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SalesforceSettings {
    /// Where users log in and tokens come from: `"login"` (production, default), `"test"`
    /// (sandboxes), a My Domain host (`acme.my.salesforce.com`) or a full origin
    /// (`https://acme.my.salesforce.com`; `http://127.0.0.1:port` for simulators).
    pub login_host: String,
    /// The REST API version, `"64.0"` by default. Checked once against `/services/data/`.
    pub api_version: String,
    /// The objects to sync (stream names are the object API names, custom `__c` included).
    /// Default: [`DEFAULT_OBJECTS`].
    pub objects: Option<Vec<String>>,
    /// Objects synced besides `objects` (e.g. `["Invoice__c"]`).
    pub extra_objects: Vec<String>,
    /// Restricts the fields read per object (default: every readable field from describe).
    /// A named field that describe does not show (not readable for this user) is skipped
    /// with a warning.
    pub fields: BTreeMap<String, Vec<String>>,
    /// A walk whose query matches more records than this goes through Bulk API 2.0.
    pub bulk_threshold: u64,
    /// Records per Bulk results page (`maxRecords`), one connector page each.
    pub bulk_page_records: u64,
    /// How long to wait for a Bulk job to complete before the read fails (resumably).
    pub bulk_poll_timeout: String,
    /// Ask for gzip-compressed Bulk results.
    pub bulk_gzip: bool,
    /// Records per REST query page asked for (`Sforce-Query-Options: batchSize`, 200-2000).
    pub query_batch_size: u32,
    /// The longest query URL sent; wider objects are split into field sets joined by `Id`.
    pub max_query_url: usize,
    /// How far back each incremental walk re-reads (records can become visible late).
    pub lookback: String,
    /// The lower bound of a full sync (RFC 3339), also the first window when a query times out.
    pub start_date: String,
    /// Share of the org's daily API allocation after which a sync stops (resumably).
    pub daily_api_share: f64,
    /// How deletes are found.
    pub deletes: DeleteMode,
    /// The instance URL when the connection uses a static access token (with OAuth it comes
    /// from the token answer).
    pub instance_url: Option<String>,
    /// Host patterns allowed for `instance_url` (default [`DEFAULT_INSTANCE_HOSTS`]).
    pub instance_hosts: Option<Vec<String>>,
    /// The org id (15 or 18 characters): Outbound Messages from any other org are refused.
    pub organization_id: Option<String>,
    /// External id field per object, for upserts (`{"Account": "External_Id__c"}`).
    pub external_ids: BTreeMap<String, String>,
    /// The `client` of `Sforce-Call-Options` sent with writes (recognised in Change Data
    /// Capture's `changeOrigin`).
    pub call_options_client: String,
    /// How long our own writes are remembered for echo suppression.
    pub echo_window: String,
}

impl Default for SalesforceSettings {
    fn default() -> Self {
        SalesforceSettings {
            login_host: "login".into(),
            api_version: DEFAULT_API_VERSION.into(),
            objects: None,
            extra_objects: Vec::new(),
            fields: BTreeMap::new(),
            bulk_threshold: 50_000,
            bulk_page_records: 10_000,
            bulk_poll_timeout: "30m".into(),
            bulk_gzip: true,
            query_batch_size: 2000,
            max_query_url: 16_384,
            lookback: "10s".into(),
            start_date: "2000-01-01T00:00:00Z".into(),
            daily_api_share: 0.8,
            deletes: DeleteMode::QueryAll,
            instance_url: None,
            instance_hosts: None,
            organization_id: None,
            external_ids: BTreeMap::new(),
            call_options_client: "apex-connect".into(),
            echo_window: "10m".into(),
        }
    }
}

/// The settings resolved and validated (see [`SalesforceSettings::resolve`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SalesforceConfig {
    /// The login origin (`https://login.salesforce.com`), token endpoint host and JWT `aud`.
    pub login_url: Url,
    /// `"64.0"`.
    pub api_version: String,
    /// The objects synced, in order, without duplicates.
    pub objects: Vec<String>,
    /// Field restrictions per object.
    pub fields: BTreeMap<String, Vec<String>>,
    /// See [`SalesforceSettings::bulk_threshold`].
    pub bulk_threshold: u64,
    /// See [`SalesforceSettings::bulk_page_records`].
    pub bulk_page_records: u64,
    /// See [`SalesforceSettings::bulk_poll_timeout`].
    pub bulk_poll_timeout: Duration,
    /// See [`SalesforceSettings::bulk_gzip`].
    pub bulk_gzip: bool,
    /// See [`SalesforceSettings::query_batch_size`].
    pub query_batch_size: u32,
    /// See [`SalesforceSettings::max_query_url`].
    pub max_query_url: usize,
    /// See [`SalesforceSettings::lookback`].
    pub lookback: Duration,
    /// See [`SalesforceSettings::start_date`], Unix milliseconds.
    pub start_ms: i64,
    /// See [`SalesforceSettings::daily_api_share`].
    pub daily_api_share: f64,
    /// See [`SalesforceSettings::deletes`].
    pub deletes: DeleteMode,
    /// See [`SalesforceSettings::instance_url`].
    pub instance_url: Option<Url>,
    /// See [`SalesforceSettings::instance_hosts`].
    pub instance_hosts: Vec<String>,
    /// See [`SalesforceSettings::organization_id`].
    pub organization_id: Option<String>,
    /// See [`SalesforceSettings::external_ids`].
    pub external_ids: BTreeMap<String, String>,
    /// See [`SalesforceSettings::call_options_client`].
    pub call_options_client: String,
    /// See [`SalesforceSettings::echo_window`].
    pub echo_window: Duration,
}

fn duration(name: &'static str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        Error::config("setting is not a duration such as \"10s\" or \"5m\"")
            .with_context("setting", name)
            .with_context("value", text)
            .set_source(e)
    })
}

/// Whether `name` is a valid sObject or field API name (letters, digits, underscores, starting
/// with a letter, at most 80 characters): what may go into SOQL and URL paths unquoted.
pub fn is_api_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 80
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !name.ends_with('_')
        && !name.contains("___")
}

/// The login origin for a `login_host` setting.
///
/// # Errors
/// `Config` for a value that is not `login`, `test`, a host or an `https` origin (`http` on
/// loopback only).
pub fn login_url(setting: &str) -> Result<Url> {
    let s = setting.trim();
    let text = match s {
        "" | "login" => "https://login.salesforce.com".to_string(),
        "test" => "https://test.salesforce.com".to_string(),
        s if s.contains("://") => s.trim_end_matches('/').to_string(),
        host => format!("https://{host}"),
    };
    let url = Url::parse(&text).map_err(|e| {
        Error::config("login_host is not a host or origin")
            .with_context("setting", "login_host")
            .with_context("value", s)
            .set_source(e)
    })?;
    check_origin("login_host", &url)?;
    Ok(url)
}

/// Refuses URLs that are not a bare `https` origin (`http` only on loopback).
pub(crate) fn check_origin(setting: &'static str, url: &Url) -> Result<()> {
    let bad = |why: &'static str| {
        Error::config(why)
            .with_context("setting", setting)
            .with_context("value", url.origin().ascii_serialization())
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("the URL must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("the URL must not carry a query or fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        _ => Err(bad("the URL must use https (http only on loopback)")),
    }
}

/// Whether `url`'s host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Parses an RFC 3339 time as Unix milliseconds.
pub(crate) fn rfc3339_ms(name: &'static str, text: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|d| d.timestamp_millis())
        .map_err(|e| {
            Error::config("setting is not an RFC 3339 time such as 2020-01-01T00:00:00Z")
                .with_context("setting", name)
                .with_context("value", text)
                .set_source(e)
        })
}

impl SalesforceSettings {
    /// Validates and resolves the settings.
    ///
    /// # Errors
    /// `Config` naming the bad setting: an object or field that is not an API name, a bad
    /// duration, share, version, batch size or host.
    pub fn resolve(&self) -> Result<SalesforceConfig> {
        let login_url = login_url(&self.login_host)?;
        let v = self.api_version.trim();
        let valid_version = v.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        if !valid_version || v.len() > 8 {
            return Err(
                Error::config("api_version must look like \"64.0\"").with_context("value", v)
            );
        }
        let mut objects: Vec<String> = Vec::new();
        let base: Vec<String> = match &self.objects {
            Some(o) => o.clone(),
            None => DEFAULT_OBJECTS.iter().map(|s| s.to_string()).collect(),
        };
        for o in base.iter().chain(self.extra_objects.iter()) {
            let o = o.trim();
            if !is_api_name(o) {
                return Err(Error::config("an object name is not a Salesforce API name")
                    .with_context("setting", "objects")
                    .with_context("value", o));
            }
            if !objects.iter().any(|x| x.eq_ignore_ascii_case(o)) {
                objects.push(o.to_string());
            }
        }
        if objects.is_empty() {
            return Err(Error::config("no object to sync").with_context("setting", "objects"));
        }
        for (object, fields) in &self.fields {
            if !is_api_name(object) {
                return Err(Error::config("an object name is not a Salesforce API name")
                    .with_context("setting", "fields")
                    .with_context("value", object));
            }
            if let Some(bad) = fields.iter().find(|f| !is_api_name(f)) {
                return Err(Error::config("a field name is not a Salesforce API name")
                    .with_context("setting", "fields")
                    .with_context("value", bad));
            }
        }
        for (object, field) in &self.external_ids {
            if !is_api_name(object) || !is_api_name(field) {
                return Err(Error::config("external_ids maps API names to API names")
                    .with_context("setting", "external_ids")
                    .with_context("value", format!("{object}={field}")));
            }
        }
        if !(self.daily_api_share > 0.0 && self.daily_api_share <= 1.0) {
            return Err(Error::config("daily_api_share must be in (0, 1]")
                .with_context("value", self.daily_api_share));
        }
        if !(200..=2000).contains(&self.query_batch_size) {
            return Err(
                Error::config("query_batch_size must be between 200 and 2000")
                    .with_context("value", self.query_batch_size),
            );
        }
        if self.max_query_url < 512 {
            return Err(Error::config("max_query_url must be at least 512")
                .with_context("value", self.max_query_url));
        }
        if self.bulk_page_records == 0 || self.bulk_page_records > 1_000_000 {
            return Err(
                Error::config("bulk_page_records must be between 1 and 1,000,000")
                    .with_context("value", self.bulk_page_records),
            );
        }
        let instance_url = match &self.instance_url {
            Some(u) => {
                let url = Url::parse(u.trim()).map_err(|e| {
                    Error::config("instance_url is not a URL")
                        .with_context("setting", "instance_url")
                        .set_source(e)
                })?;
                check_origin("instance_url", &url)?;
                Some(url)
            }
            None => None,
        };
        let instance_hosts = self.instance_hosts.clone().unwrap_or_else(|| {
            DEFAULT_INSTANCE_HOSTS
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        let organization_id = match &self.organization_id {
            Some(id) => {
                let id = id.trim();
                if !(id.len() == 15 || id.len() == 18)
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(
                        Error::config("organization_id must be a 15 or 18 character id")
                            .with_context("value", id),
                    );
                }
                Some(id.to_string())
            }
            None => None,
        };
        Ok(SalesforceConfig {
            login_url,
            api_version: v.to_string(),
            objects,
            fields: self.fields.clone(),
            bulk_threshold: self.bulk_threshold,
            bulk_page_records: self.bulk_page_records,
            bulk_poll_timeout: duration("bulk_poll_timeout", &self.bulk_poll_timeout)?,
            bulk_gzip: self.bulk_gzip,
            query_batch_size: self.query_batch_size,
            max_query_url: self.max_query_url,
            lookback: duration("lookback", &self.lookback)?,
            start_ms: rfc3339_ms("start_date", &self.start_date)?,
            daily_api_share: self.daily_api_share,
            deletes: self.deletes,
            instance_url,
            instance_hosts,
            organization_id,
            external_ids: self.external_ids.clone(),
            call_options_client: self.call_options_client.clone(),
            echo_window: duration("echo_window", &self.echo_window)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = SalesforceSettings::default().resolve().unwrap();
        assert_eq!(c.login_url.as_str(), "https://login.salesforce.com/");
        assert_eq!(c.objects.len(), DEFAULT_OBJECTS.len());
        assert_eq!(c.lookback, Duration::from_secs(10));
        assert!((c.daily_api_share - 0.8).abs() < f64::EPSILON);
    }

    #[test]
    fn hosts_and_names() {
        assert_eq!(
            login_url("test").unwrap().as_str(),
            "https://test.salesforce.com/"
        );
        assert_eq!(
            login_url("acme.my.salesforce.com").unwrap().as_str(),
            "https://acme.my.salesforce.com/"
        );
        assert!(login_url("http://evil.example.com").is_err());
        assert!(login_url("http://127.0.0.1:8080").is_ok());
        assert!(is_api_name("Invoice__c"));
        assert!(is_api_name("Account"));
        assert!(!is_api_name("Account; DELETE"));
        assert!(!is_api_name("1Account"));
        assert!(!is_api_name(""));
        let s = SalesforceSettings {
            extra_objects: vec!["Invoice__c".into(), "account".into()],
            ..Default::default()
        };
        let c = s.resolve().unwrap();
        assert_eq!(c.objects.last().map(String::as_str), Some("Invoice__c"));
        let bad = SalesforceSettings {
            extra_objects: vec!["Bad Name".into()],
            ..Default::default()
        };
        assert_eq!(
            bad.resolve().unwrap_err().kind(),
            apex_connect_core::ErrorKind::Config
        );
        let bad = SalesforceSettings {
            daily_api_share: 1.5,
            ..Default::default()
        };
        assert!(bad.resolve().is_err());
    }

    #[test]
    fn unknown_settings_are_refused() {
        let e = serde_json::from_value::<SalesforceSettings>(serde_json::json!({"objcts": []}));
        assert!(e.is_err());
    }
}
