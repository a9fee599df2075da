//! Which origins (scheme, host and port) a connection may send its credentials to.

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

/// A host pattern and the port it allows (`None`: the base URL's port).
#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    host: HostPattern,
    port: Option<u16>,
}

impl OriginPattern {
    /// Parses `host`, `host:port`, `*.suffix`, `*.suffix:port`, `[v6]` or `[v6]:port`.
    fn parse(pattern: &str) -> Result<OriginPattern> {
        let p = pattern.trim().to_ascii_lowercase();
        let bad = || {
            Error::new(
                ErrorKind::Config,
                format!(
                    "invalid API host pattern {pattern:?}: expected `host`, `*.suffix`, \
                     optionally followed by `:port`"
                ),
            )
        };
        // Split off an explicit port; an IPv6 literal keeps its brackets (as `host_str`).
        let (host, port) = if p.starts_with('[') {
            let close = p.find(']').ok_or_else(bad)?;
            let (h, rest) = p.split_at(close + 1);
            let inner = &h[1..h.len() - 1];
            if inner.is_empty() || !inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                return Err(bad());
            }
            match rest {
                "" => (h.to_string(), None),
                r => (
                    h.to_string(),
                    Some(parse_port(r.strip_prefix(':').ok_or_else(bad)?).ok_or_else(bad)?),
                ),
            }
        } else {
            match p.rsplit_once(':') {
                Some((h, port)) => (h.to_string(), Some(parse_port(port).ok_or_else(bad)?)),
                None => (p.clone(), None),
            }
        };
        let host = host.trim_end_matches('.');
        if host.starts_with('[') {
            return Ok(OriginPattern {
                host: HostPattern::Exact(host.to_string()),
                port,
            });
        }
        let (wild, host) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with('.')
            && !host.contains("..");
        if !valid {
            return Err(bad());
        }
        // A wildcard over a single label (`*.com`) would allow the whole internet.
        if wild && !host.contains('.') {
            return Err(bad());
        }
        let host = if wild {
            HostPattern::Suffix(host.to_string())
        } else {
            HostPattern::Exact(host.to_string())
        };
        Ok(OriginPattern { host, port })
    }

    fn matches(&self, host: &str, port: u16, base_port: u16) -> bool {
        if port != self.port.unwrap_or(base_port) {
            return false;
        }
        match &self.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.')),
        }
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// The set of origins links may be followed on, shared by every clone of a client (and by
/// its redirect policy and auth layer), so hosts added at run time apply everywhere.
///
/// An origin is scheme, host **and** port: the base URL's origin, plus the patterns' hosts
/// on the base URL's scheme and on the pattern's port (the base URL's port when the pattern
/// names none). A link to the API host on another port is a foreign origin.
#[derive(Debug, Clone)]
pub(crate) struct HostAllowList {
    scheme: String,
    base_host: String,
    base_port: u16,
    patterns: Arc<RwLock<Vec<OriginPattern>>>,
}

impl HostAllowList {
    pub(crate) fn new(base: &Url, patterns: &[String]) -> Result<HostAllowList> {
        let base_host = base
            .host_str()
            .ok_or_else(|| Error::config("base URL has no host"))?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let base_port = base
            .port_or_known_default()
            .ok_or_else(|| Error::config("base URL has no port and no known default port"))?;
        let parsed = patterns
            .iter()
            .map(|p| OriginPattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(HostAllowList {
            scheme: base.scheme().to_string(),
            base_host,
            base_port,
            patterns: Arc::new(RwLock::new(parsed)),
        })
    }

    pub(crate) fn add(&self, pattern: &str) -> Result<()> {
        let p = OriginPattern::parse(pattern)?;
        let mut list = self.patterns.write().unwrap_or_else(|e| e.into_inner());
        if !list.contains(&p) {
            list.push(p);
        }
        Ok(())
    }

    /// Whether `host` on `port` (with the base URL's scheme) is one of the API's origins.
    pub(crate) fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == self.base_host && port == self.base_port {
            return true;
        }
        let list = self.patterns.read().unwrap_or_else(|e| e.into_inner());
        list.iter().any(|p| p.matches(&host, port, self.base_port))
    }

    /// Checks `url` against the scheme, host and port rules.
    pub(crate) fn check(&self, url: &Url) -> Result<()> {
        let host = url.host_str().unwrap_or("");
        let refuse = |why: String| {
            Error::new(
                ErrorKind::InvalidResponse,
                format!("refusing to follow a link to host {host:?}: {why}"),
            )
            .permanent()
        };
        if host.is_empty() {
            return Err(refuse("no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("the URL carries credentials".into()));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(url) => {}
            "http" => return Err(refuse("plain http is only allowed on loopback".into())),
            _ => return Err(refuse("unsupported scheme".into())),
        }
        if url.scheme() != self.scheme {
            return Err(refuse(format!(
                "scheme {} is not the API's scheme {}",
                url.scheme(),
                self.scheme
            )));
        }
        let Some(port) = url.port_or_known_default() else {
            return Err(refuse("no port".into()));
        };
        if !self.allows(host, port) {
            if self.host_known(host) {
                return Err(refuse(format!(
                    "port {port} is not one of this connection's API origins"
                )));
            }
            return Err(refuse("not one of this connection's API hosts".into()));
        }
        Ok(())
    }

    /// Whether `host` is allowed on some port (to word the refusal).
    fn host_known(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host == self.base_host {
            return true;
        }
        let list = self.patterns.read().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .any(|p| p.matches(&host, p.port.unwrap_or(self.base_port), self.base_port))
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

    fn ok(l: &HostAllowList, url: &str) -> bool {
        l.check(&Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn wildcard_needs_an_extra_label() {
        let l = list("https://api2.frontapp.com", &["*.api.frontapp.com"]);
        assert!(l.allows("acme.api.frontapp.com", 443));
        assert!(l.allows("ACME.api.frontapp.com", 443));
        assert!(!l.allows("api.frontapp.com", 443));
        assert!(!l.allows("evilapi.frontapp.com", 443));
        assert!(!l.allows("acme.api.frontapp.com.evil.com", 443));
        assert!(l.allows("api2.frontapp.com", 443));
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let l = list("https://api2.frontapp.com", &["*.api.frontapp.com"]);
        assert!(ok(&l, "https://api2.frontapp.com/x"));
        assert!(ok(&l, "https://api2.frontapp.com:443/x"));
        assert!(ok(&l, "https://acme.api.frontapp.com/x"));
        for foreign in [
            "https://api2.frontapp.com:8443/x",
            "https://api2.frontapp.com:80/x",
            "https://acme.api.frontapp.com:444/x",
        ] {
            let e = l.check(&Url::parse(foreign).unwrap()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidResponse, "{foreign}");
            assert!(e.message().contains("port"), "{e}");
        }
        // Loopback: the base's port only, on the base's scheme.
        let local = list("http://127.0.0.1:8080", &["localhost", "api.example.com"]);
        assert!(ok(&local, "http://127.0.0.1:8080/x"));
        assert!(ok(&local, "http://localhost:8080/x"));
        assert!(!ok(&local, "http://127.0.0.1:9/x"));
        assert!(!ok(&local, "http://localhost:9/x"));
        assert!(!ok(&local, "https://127.0.0.1:8080/x"));
        assert!(!ok(&local, "https://api.example.com/x"));
        assert!(!ok(&list("http://localhost:1", &[]), "http://localhost:2/"));
        assert!(!ok(&list("http://[::1]:1", &[]), "http://[::1]:2/"));
        assert!(ok(&list("http://[::1]:1", &[]), "http://[::1]:1/"));
        // An explicit port in a pattern allows that port (only).
        let ported = list(
            "https://api.example.com",
            &["files.example.com:8443", "[::1]:9"],
        );
        assert!(ok(&ported, "https://files.example.com:8443/x"));
        assert!(!ok(&ported, "https://files.example.com/x"));
        assert!(ported.allows("[::1]", 9));
        assert!(!ported.allows("[::1]", 443));
    }

    #[test]
    fn scheme_rules() {
        let l = list("https://api.example.com", &["files.example.com"]);
        assert!(ok(&l, "https://files.example.com/x"));
        let e = l
            .check(&Url::parse("http://api.example.com/x?token=1").unwrap())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(!e.is_temporary());
        assert!(!e.to_string().contains("token=1"));
        assert!(!ok(&l, "ftp://api.example.com/x"));
        assert!(!ok(&l, "https://u:p@api.example.com/x"));
        let local = list("http://localhost:1", &[]);
        assert!(ok(&local, "http://localhost:1/"));
        let v6 = list("http://[::1]:1", &[]);
        assert!(ok(&v6, "http://[::1]:1/"));
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        let base = Url::parse("https://a.b").unwrap();
        for p in [
            "*.com",
            "",
            "https://x.y",
            "a..b",
            "*.",
            "x/y",
            "a.b:0",
            "a.b:99999",
            "a.b:",
            "[zz]",
            "[::1",
            "[::1]x",
            "a.b:8:9",
        ] {
            let e = HostAllowList::new(&base, &[p.to_string()]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{p}");
        }
    }

    #[test]
    fn hosts_added_later_are_shared() {
        let l = list("https://login.salesforce.com", &[]);
        let c = l.clone();
        assert!(!c.allows("acme.my.salesforce.com", 443));
        l.add("acme.my.salesforce.com").unwrap();
        assert!(c.allows("acme.my.salesforce.com", 443));
    }
}
