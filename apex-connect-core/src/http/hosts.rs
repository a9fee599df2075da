//! Which hosts a connection may send its credentials to.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use url::{Host, Url};

use crate::error::{Error, ErrorKind, Result};

/// One allowed host: exact, or `*.suffix` (any host with at least one more label).
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    fn parse(pattern: &str) -> Result<HostPattern> {
        let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        let bad = || {
            Error::new(
                ErrorKind::Config,
                format!("invalid API host pattern {pattern:?}: expected `host` or `*.suffix`"),
            )
        };
        let (wild, host) = match p.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == ':')
            && !host.starts_with('.')
            && !host.contains("..");
        if !valid {
            return Err(bad());
        }
        // A wildcard over a single label (`*.com`) would allow the whole internet.
        if wild && !host.contains('.') {
            return Err(bad());
        }
        Ok(if wild {
            HostPattern::Suffix(host.to_string())
        } else {
            HostPattern::Exact(host.to_string())
        })
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        }
    }
}

/// The set of hosts links may be followed on, shared by every clone of a client (and by its
/// redirect policy), so hosts added at run time apply everywhere.
#[derive(Debug, Clone)]
pub(crate) struct HostAllowList {
    base_host: String,
    patterns: Arc<RwLock<Vec<HostPattern>>>,
}

impl HostAllowList {
    pub(crate) fn new(base: &Url, patterns: &[String]) -> Result<HostAllowList> {
        let base_host = base
            .host_str()
            .ok_or_else(|| Error::config("base URL has no host"))?
            .to_ascii_lowercase();
        let parsed = patterns
            .iter()
            .map(|p| HostPattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(HostAllowList {
            base_host,
            patterns: Arc::new(RwLock::new(parsed)),
        })
    }

    pub(crate) fn add(&self, pattern: &str) -> Result<()> {
        let p = HostPattern::parse(pattern)?;
        let mut list = self.patterns.write().unwrap_or_else(|e| e.into_inner());
        if !list.contains(&p) {
            list.push(p);
        }
        Ok(())
    }

    pub(crate) fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == self.base_host {
            return true;
        }
        let list = self.patterns.read().unwrap_or_else(|e| e.into_inner());
        list.iter().any(|p| p.matches(&host))
    }

    /// Checks `url` against the host and scheme rules.
    pub(crate) fn check(&self, url: &Url) -> Result<()> {
        let host = url.host_str().unwrap_or("");
        let refuse = |why: &str| {
            Error::new(
                ErrorKind::InvalidResponse,
                format!("refusing to follow a link to host {host:?}: {why}"),
            )
            .permanent()
        };
        if host.is_empty() {
            return Err(refuse("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("the URL carries credentials"));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(url) => {}
            "http" => return Err(refuse("plain http is only allowed on loopback")),
            _ => return Err(refuse("unsupported scheme")),
        }
        if !self.allows_host(host) {
            return Err(refuse("not one of this connection's API hosts"));
        }
        Ok(())
    }
}

/// Whether the URL's host is loopback (127.0.0.0/8, ::1, localhost).
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(base: &str, pats: &[&str]) -> HostAllowList {
        let pats: Vec<String> = pats.iter().map(|s| s.to_string()).collect();
        HostAllowList::new(&Url::parse(base).unwrap(), &pats).unwrap()
    }

    #[test]
    fn wildcard_needs_an_extra_label() {
        let l = list("https://api2.frontapp.com", &["*.api.frontapp.com"]);
        assert!(l.allows_host("acme.api.frontapp.com"));
        assert!(l.allows_host("ACME.api.frontapp.com"));
        assert!(!l.allows_host("api.frontapp.com"));
        assert!(!l.allows_host("evilapi.frontapp.com"));
        assert!(!l.allows_host("acme.api.frontapp.com.evil.com"));
        assert!(l.allows_host("api2.frontapp.com"));
    }

    #[test]
    fn scheme_rules() {
        let l = list("http://127.0.0.1:8080", &["api.example.com"]);
        assert!(
            l.check(&Url::parse("http://127.0.0.1:9/x").unwrap())
                .is_ok()
        );
        assert!(
            l.check(&Url::parse("https://api.example.com/x").unwrap())
                .is_ok()
        );
        let e = l
            .check(&Url::parse("http://api.example.com/x?token=1").unwrap())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(!e.is_temporary());
        assert!(!e.to_string().contains("token=1"));
        assert!(
            l.check(&Url::parse("ftp://api.example.com/x").unwrap())
                .is_err()
        );
        assert!(
            l.check(&Url::parse("https://u:p@api.example.com/x").unwrap())
                .is_err()
        );
        let local = list("http://localhost:1", &[]);
        assert!(
            local
                .check(&Url::parse("http://localhost:2/").unwrap())
                .is_ok()
        );
        let v6 = list("http://[::1]:1", &[]);
        assert!(v6.check(&Url::parse("http://[::1]:2/").unwrap()).is_ok());
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        let base = Url::parse("https://a.b").unwrap();
        for p in ["*.com", "", "https://x.y", "a..b", "*.", "x/y"] {
            let e = HostAllowList::new(&base, &[p.to_string()]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{p}");
        }
    }

    #[test]
    fn hosts_added_later_are_shared() {
        let l = list("https://login.salesforce.com", &[]);
        let c = l.clone();
        assert!(!c.allows_host("acme.my.salesforce.com"));
        l.add("acme.my.salesforce.com").unwrap();
        assert!(c.allows_host("acme.my.salesforce.com"));
    }
}
