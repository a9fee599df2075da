//! Normalizers for the identities that join source entities: emails, phones, web domains,
//! handles and platform ids.
//!
//! Every function here is pure, total and idempotent: it never panics, whatever the input, it
//! returns `None` for a value that is no usable identity (rather than a key that would merge
//! unrelated entities), and normalizing a normalized value gives it back unchanged. The rules,
//! and the sources they come from, are listed in the crate README ("Normalization rules").

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Longest input any normalizer looks at; longer values are no identity.
pub const MAX_INPUT_LEN: usize = 1024;
/// Longest email address kept (RFC 5321 §4.5.3.1: 64-octet local part, 255-octet domain).
pub const MAX_EMAIL_LEN: usize = 320;
/// Longest phone input handed to the `phonenumber` parser.
pub const MAX_PHONE_LEN: usize = 64;
/// Longest handle or platform id kept.
pub const MAX_HANDLE_LEN: usize = 256;

/// Email providers whose own documentation says that dots in the local part do not matter and
/// that `+tag` subaddresses reach the same mailbox: Gmail (and its alias domain Googlemail).
/// Google: "Dots don't matter in Gmail addresses" (support.google.com/mail/answer/7436150);
/// "add a plus sign and any word" (the Gmail blog, "2 hidden ways to get more from your Gmail
/// address", 2008); `@googlemail.com` is the same account as `@gmail.com`
/// (support.google.com/mail/answer/10313).
pub const GMAIL_DOMAINS: &[&str] = &["gmail.com", "googlemail.com"];

/// Providers that document `+tag` subaddressing for every mailbox on these domains (beyond
/// Gmail): Fastmail ("Plus addressing and subdomain addressing",
/// fastmail.help/hc/en-us/articles/360060591053) and Proton Mail ("+aliases",
/// proton.me/support/creating-aliases). Providers where subaddressing is a per-tenant setting
/// (Exchange Online, Google Workspace on a custom domain) or undocumented by the provider
/// itself are not listed: stripping a `+tag` there could join two different mailboxes.
pub const SUBADDRESS_DOMAINS: &[&str] = &[
    "fastmail.com",
    "fastmail.fm",
    "proton.me",
    "protonmail.com",
    "protonmail.ch",
    "pm.me",
];

/// Free-mail, ISP and shared-hosting registrable domains: an email there says nothing about
/// the person's organization, and an organization record carrying one (a small business whose
/// "website" is its Gmail address) must never merge with another on it.
pub const GENERIC_DOMAINS: &[&str] = &[
    // Free mail.
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "passport.com",
    "yahoo.com",
    "ymail.com",
    "rocketmail.com",
    "aol.com",
    "aim.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "proton.me",
    "protonmail.com",
    "protonmail.ch",
    "pm.me",
    "tutanota.com",
    "tuta.io",
    "fastmail.com",
    "fastmail.fm",
    "hey.com",
    "zoho.com",
    "zohomail.com",
    "mail.com",
    "email.com",
    "gmx.com",
    "gmx.net",
    "gmx.de",
    "web.de",
    "t-online.de",
    "freenet.de",
    "yandex.com",
    "yandex.ru",
    "mail.ru",
    "inbox.ru",
    "list.ru",
    "bk.ru",
    "rambler.ru",
    "qq.com",
    "163.com",
    "126.com",
    "sina.com",
    "naver.com",
    "daum.net",
    "hanmail.net",
    "rediffmail.com",
    "libero.it",
    "virgilio.it",
    "orange.fr",
    "wanadoo.fr",
    "free.fr",
    "laposte.net",
    "sfr.fr",
    "btinternet.com",
    "sky.com",
    "virginmedia.com",
    "comcast.net",
    "verizon.net",
    "att.net",
    "sbcglobal.net",
    "bellsouth.net",
    "charter.net",
    "cox.net",
    "earthlink.net",
    "shaw.ca",
    "rogers.com",
    "bigpond.com",
    "optusnet.com.au",
    "xtra.co.nz",
    "seznam.cz",
    "wp.pl",
    "o2.pl",
    "interia.pl",
    "uol.com.br",
    "bol.com.br",
    "terra.com.br",
    // Social and shared hosting: a "website" here is a profile, not an organization's domain.
    "linkedin.com",
    "facebook.com",
    "instagram.com",
    "twitter.com",
    "x.com",
    "youtube.com",
    "tiktok.com",
    "github.com",
    "gitlab.com",
    "medium.com",
    "google.com",
    "wordpress.com",
    "blogspot.com",
    "wixsite.com",
    "wix.com",
    "squarespace.com",
    "weebly.com",
    "godaddysites.com",
    "carrd.co",
    "linktr.ee",
    "notion.site",
    "about.me",
];

/// Brands whose free-mail domain exists under many country suffixes (`yahoo.co.uk`,
/// `hotmail.fr`, `gmx.at`, `live.com.au`, ...): a registrable domain whose label before the
/// public suffix is one of these is generic too.
pub const GENERIC_BRAND_LABELS: &[&str] = &[
    "gmail",
    "googlemail",
    "yahoo",
    "ymail",
    "hotmail",
    "outlook",
    "live",
    "msn",
    "aol",
    "gmx",
    "yandex",
    "protonmail",
];

/// Mailbox names that reach a role or a team, not one person (RFC 2142 "Mailbox names for
/// common services, roles and functions", plus the role names CRMs see most): two people both
/// listed with `info@acme.com` are not one person. Such emails never merge people; they still
/// link a person to the organization of their domain.
pub const ROLE_LOCAL_PARTS: &[&str] = &[
    // RFC 2142.
    "info",
    "marketing",
    "sales",
    "support",
    "abuse",
    "noc",
    "security",
    "postmaster",
    "hostmaster",
    "usenet",
    "news",
    "webmaster",
    "www",
    "uucp",
    "ftp",
    // Common role mailboxes.
    "admin",
    "office",
    "contact",
    "hello",
    "team",
    "help",
    "billing",
    "accounts",
    "finance",
    "hr",
    "jobs",
    "careers",
    "press",
    "enquiries",
    "inquiries",
    "service",
    "noreply",
    "no-reply",
    "donotreply",
    "mail",
    "email",
    "reception",
];

/// A region for phone numbers written without an international prefix: an ISO 3166-1 alpha-2
/// code the `phonenumber` crate knows (`"US"`, `"GB"`, `"DE"`, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(phonenumber::country::Id);

impl Region {
    /// The region's code (`"US"`).
    pub fn code(&self) -> &str {
        self.0.as_ref()
    }

    /// The `phonenumber` crate's id.
    pub fn id(&self) -> phonenumber::country::Id {
        self.0
    }
}

impl FromStr for Region {
    type Err = apex_connect_core::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.trim().to_ascii_uppercase();
        phonenumber::country::Id::from_str(&up)
            .map(Region)
            .map_err(|_| {
                apex_connect_core::Error::config("not a region the phone number metadata knows")
                    .with_context("region", s.chars().take(16).collect::<String>())
            })
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.0.as_ref())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

impl Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_ref())
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Region::from_str(&s).map_err(serde::de::Error::custom)
    }
}

/// An email address split into its normalized parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NormalizedEmail {
    /// `local@domain`, normalized.
    pub address: String,
    /// The domain part (ASCII, lower case, provider aliases applied: `googlemail.com` is
    /// `gmail.com`).
    pub domain: String,
    /// Whether the local part names a role or team (`info@`, `sales@`; see
    /// [`ROLE_LOCAL_PARTS`]).
    pub role: bool,
}

/// The normalizers with their configuration: which domains are generic and which providers
/// strip `+tags`. [`Normalizer::default`] uses the lists of this module.
#[derive(Clone)]
pub struct Normalizer {
    generic: HashSet<String>,
    brands: HashSet<String>,
    subaddress: HashSet<String>,
    roles: HashSet<String>,
}

impl fmt::Debug for Normalizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Normalizer")
            .field("generic_domains", &self.generic.len())
            .field("subaddress_domains", &self.subaddress.len())
            .finish_non_exhaustive()
    }
}

impl Default for Normalizer {
    fn default() -> Self {
        Normalizer {
            generic: GENERIC_DOMAINS.iter().map(|s| s.to_string()).collect(),
            brands: GENERIC_BRAND_LABELS.iter().map(|s| s.to_string()).collect(),
            subaddress: SUBADDRESS_DOMAINS.iter().map(|s| s.to_string()).collect(),
            roles: ROLE_LOCAL_PARTS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Normalizer {
    /// Adds generic domains (normalized to their registrable domain; values that are no domain
    /// are skipped).
    pub fn with_generic_domains<I, S>(mut self, domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for d in domains {
            if let Some(d) = registrable_domain(d.as_ref()) {
                self.generic.insert(d);
            }
        }
        self
    }

    /// Adds domains whose provider documents `+tag` subaddressing for every mailbox.
    pub fn with_subaddress_domains<I, S>(mut self, domains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for d in domains {
            if let Some(d) = email_domain(d.as_ref()) {
                self.subaddress.insert(d);
            }
        }
        self
    }

    /// Normalizes an email address (see the module docs and the README for the rules).
    /// `None` when `input` is no usable address.
    pub fn email(&self, input: &str) -> Option<NormalizedEmail> {
        if input.len() > MAX_INPUT_LEN {
            return None;
        }
        let s = strip_email_wrapping(input)?;
        let at = s.rfind('@')?;
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || local.contains('@') {
            return None;
        }
        let mut domain = email_domain(domain)?;
        if domain == "googlemail.com" {
            domain = "gmail.com".to_string();
        }
        // Unicode local parts (RFC 6531): compose, then lower-case, then compose again (a
        // lower-cased character may decompose).
        let mut local: String = local
            .nfc()
            .collect::<String>()
            .to_lowercase()
            .nfc()
            .collect();
        if local.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        if domain == "gmail.com" {
            if let Some(plus) = local.find('+') {
                local.truncate(plus);
            }
            local.retain(|c| c != '.');
        } else if self.subaddress.contains(&domain)
            && let Some(plus) = local.find('+')
        {
            local.truncate(plus);
        }
        if local.is_empty() {
            return None;
        }
        let role = {
            let base = local.split('+').next().unwrap_or(&local);
            self.roles.contains(base)
        };
        let address = format!("{local}@{domain}");
        if address.len() > MAX_EMAIL_LEN {
            return None;
        }
        Some(NormalizedEmail {
            address,
            domain,
            role,
        })
    }

    /// Whether a registrable domain (the output of [`registrable_domain`]) is generic: listed
    /// in [`GENERIC_DOMAINS`] (or added), or a free-mail brand under any suffix
    /// ([`GENERIC_BRAND_LABELS`]).
    pub fn is_generic(&self, registrable: &str) -> bool {
        if self.generic.contains(registrable) {
            return true;
        }
        let label = match psl::suffix_str(registrable) {
            Some(suffix) if registrable.len() > suffix.len() + 1 => {
                &registrable[..registrable.len() - suffix.len() - 1]
            }
            _ => return false,
        };
        self.brands.contains(label)
    }

    /// The organization domain an email points at: the registrable domain of its domain part,
    /// unless that is generic. `None` for generic domains and for no address.
    pub fn email_org_domain(&self, email: &NormalizedEmail) -> Option<String> {
        let d = registrable_domain(&email.domain)?;
        (!self.is_generic(&d)).then_some(d)
    }
}

/// Trims whitespace and the wrappings addresses come in (`mailto:`, `Name <addr>`, quotes).
fn strip_email_wrapping(input: &str) -> Option<&str> {
    let mut s = input.trim();
    if let (Some(open), true) = (s.rfind('<'), s.ends_with('>')) {
        s = s[open + 1..s.len() - 1].trim();
    }
    if s.len() >= 7 && s.is_char_boundary(7) && s[..7].eq_ignore_ascii_case("mailto:") {
        s = s[7..].trim();
    }
    let s = s.trim_matches(|c| c == '"' || c == '\'').trim();
    (!s.is_empty()).then_some(s)
}

/// The domain part of an email, or a host name: IDNA to ASCII (UTS #46, lower case), trailing
/// dot removed, every label a valid LDH label, at least two labels, not an IP address.
fn email_domain(domain: &str) -> Option<String> {
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() || d.len() > 253 || d.starts_with('[') {
        return None;
    }
    let ascii = idna::domain_to_ascii(d).ok()?;
    let ascii = ascii.trim_end_matches('.');
    if ascii.is_empty() || ascii.len() > 253 {
        return None;
    }
    let mut labels = 0usize;
    for label in ascii.split('.') {
        labels += 1;
        if label.is_empty()
            || label.len() > 63
            || label.starts_with('-')
            || label.ends_with('-')
            || !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return None;
        }
    }
    let tld = ascii.rsplit('.').next().unwrap_or("");
    if labels < 2 || tld.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ascii.to_string())
}

/// The registrable domain ("eTLD+1", through the public suffix list, `psl` crate) of a web
/// address, host name or email domain: `https://www.Acme.co.uk/about` -> `acme.co.uk`,
/// `shop.acme.com` -> `acme.com`. Hosts under a private suffix of the list keep their own
/// label (`acme.github.io`). `None` for values that are no host name under a known public
/// suffix (`localhost`, IP addresses, `n/a`).
pub fn registrable_domain(input: &str) -> Option<String> {
    if input.len() > MAX_INPUT_LEN {
        return None;
    }
    let mut s = input.trim();
    if let Some(i) = s.find("://") {
        s = &s[i + 3..];
    } else if s.len() >= 2 && s.starts_with("//") {
        s = &s[2..];
    }
    // Cut path, query and fragment.
    if let Some(i) = s.find(['/', '?', '#', '\\']) {
        s = &s[..i];
    }
    // Userinfo, or an email given where a domain was expected.
    if let Some(i) = s.rfind('@') {
        s = &s[i + 1..];
    }
    // Port.
    if let Some(i) = s.rfind(':') {
        if s[i + 1..].bytes().all(|b| b.is_ascii_digit()) {
            s = &s[..i];
        } else {
            return None;
        }
    }
    let s = s.trim_start_matches("*.");
    let host = email_domain(s)?;
    let d = psl::domain(host.as_bytes())?;
    if !d.suffix().is_known() {
        return None;
    }
    let d = std::str::from_utf8(d.as_bytes()).ok()?;
    Some(d.to_string())
}

/// Normalizes a phone number to E.164 (`+` country code and national number) with the
/// `phonenumber` crate (libphonenumber's metadata). A number written without an international
/// prefix is read in `region`; without a region such a number is no identity (`None`), since
/// the same digits are different numbers in different countries. An extension is kept as
/// `;ext=<digits>` (RFC 3966), so colleagues behind one switchboard do not share a key. The
/// `(0)` trunk-prefix notation of international numbers (`+44 (0)20 ...`) is dropped.
/// Numbers shorter than 7 or longer than 15 digits in all are refused.
pub fn phone(input: &str, region: Option<Region>) -> Option<String> {
    let out = phone_once(input, region)?;
    // Already written as its key (E.164 from a CRM, or a key read back): a fixpoint as it is.
    if out == input.trim() {
        return Some(out);
    }
    // The key must be a fixpoint: normalizing it again (in any region, it is international)
    // gives itself. libphonenumber does not guarantee that for odd input: "500e0#0" read in
    // Switzerland gives "+4150030;ext=0", which it then refuses. A key that does not survive
    // its own normalization would match nothing later, so it is dropped: first the extension
    // (the number alone may still be a number), then the whole.
    if phone_once(&out, None).as_deref() == Some(out.as_str()) {
        return Some(out);
    }
    let bare = out.split(';').next().unwrap_or_default();
    (bare != out && phone_once(bare, None).as_deref() == Some(bare)).then(|| bare.to_string())
}

fn phone_once(input: &str, region: Option<Region>) -> Option<String> {
    let s = input.trim();
    // Our own output form, "+14155552671;ext=12" (RFC 3966's parameter), which the parser
    // does not read: the number is normalized alone and the extension put back.
    if let Some((base, ext)) = s.rsplit_once(";ext=") {
        if ext.is_empty() || ext.len() > 10 || !ext.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let base = phone_once(base, region)?;
        return (!base.contains(';')).then(|| format!("{base};ext={ext}"));
    }
    if s.is_empty() || s.len() > MAX_PHONE_LEN {
        return None;
    }
    if !s.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    // "+44 (0)20 7946 0018": the "(0)" is the national trunk prefix, not dialled from abroad.
    let owned = if s.starts_with('+') {
        s.replacen("(0)", "", 1)
    } else {
        s.to_string()
    };
    let id = region.map(|r| r.0);
    // The parser had panics on malformed input in past releases (rust-phonenumber #32, #43).
    // A panic inside it must not take a sync down: treat it as "no number".
    let parsed = std::panic::catch_unwind(move || phonenumber::parse(id, owned)).ok()?;
    let number = parsed.ok()?;
    let code = number.code().value();
    let national = number.national().to_string();
    let digits = code.to_string().len() + national.len();
    if !(7..=15).contains(&digits) || code == 0 {
        return None;
    }
    let mut out = format!("+{code}{national}");
    if let Some(ext) = number.extension() {
        let ext: String = ext.chars().filter(char::is_ascii_digit).collect();
        if !ext.is_empty() && ext.len() <= 10 {
            out.push_str(";ext=");
            out.push_str(&ext);
        }
    }
    Some(out)
}

/// Normalizes a handle (`twitter`, `intercom`, `slack`, ...): the source trimmed and lower-cased;
/// the value trimmed; for Twitter/X handles (case-insensitive, shown with `@`) also without
/// `@` or profile URL and lower-cased. `None` for empty or over-long parts.
pub fn handle(source: &str, value: &str) -> Option<(String, String)> {
    let source = source.trim().to_ascii_lowercase();
    let value = value.trim();
    if source.is_empty()
        || source.len() > 64
        || value.is_empty()
        || value.len() > MAX_HANDLE_LEN
        || value.chars().any(char::is_control)
    {
        return None;
    }
    let value = match source.as_str() {
        "twitter" | "x" => {
            let lower = value.to_ascii_lowercase();
            let v = [
                "https://twitter.com/",
                "http://twitter.com/",
                "https://x.com/",
                "http://x.com/",
                "twitter.com/",
                "x.com/",
            ]
            .iter()
            .find_map(|p| lower.strip_prefix(p))
            .unwrap_or(&lower);
            let v = v.trim_start_matches('@').trim_end_matches('/').to_string();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            v
        }
        _ => value.to_string(),
    };
    let source = if source == "x" {
        "twitter".to_string()
    } else {
        source
    };
    Some((source, value))
}

/// The alphabet of the 3-character case checksum of 18-character Salesforce ids.
const SF_CHECKSUM: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// Normalizes a Salesforce record id to its 15-character, case-sensitive form. An 18-character
/// id carries a checksum of the case of its first 15 characters (it is the form that survives
/// case-insensitive systems); the case is restored from it, so `001d000000AbCdEAAZ`,
/// `001D000000ABCDEAAZ` lower-cased and `001d000000AbCdE` all give `001d000000AbCdE`.
/// `None` for anything that is not a 15- or 18-character alphanumeric id with a valid
/// checksum.
pub fn salesforce_id(input: &str) -> Option<String> {
    let s = input.trim();
    if !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match s.len() {
        15 => Some(s.to_string()),
        18 => {
            let (base, suffix) = s.split_at(15);
            let mut out = base.as_bytes().to_vec();
            for (chunk, c) in suffix.bytes().enumerate() {
                let bits = SF_CHECKSUM
                    .iter()
                    .position(|&x| x == c.to_ascii_uppercase())?;
                for i in 0..5 {
                    let b = &mut out[chunk * 5 + i];
                    let upper = bits & (1 << i) != 0;
                    if upper {
                        if !b.is_ascii_alphabetic() {
                            return None;
                        }
                        *b = b.to_ascii_uppercase();
                    } else {
                        *b = b.to_ascii_lowercase();
                    }
                }
            }
            String::from_utf8(out).ok()
        }
        _ => None,
    }
}

/// The 18-character form of a 15-character Salesforce id (for tests and generators).
pub fn salesforce_id18(id15: &str) -> Option<String> {
    if id15.len() != 15 || !id15.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let mut out = id15.to_string();
    for chunk in id15.as_bytes().chunks(5) {
        let mut bits = 0usize;
        for (i, b) in chunk.iter().enumerate() {
            if b.is_ascii_uppercase() {
                bits |= 1 << i;
            }
        }
        out.push(SF_CHECKSUM[bits] as char);
    }
    Some(out)
}

/// Normalizes another platform's record id: trimmed, at most [`MAX_HANDLE_LEN`] bytes, no
/// control characters; Salesforce ids through [`salesforce_id`], HubSpot ids (digits) as
/// digits without leading zeros.
pub fn platform_id(platform: &str, input: &str) -> Option<String> {
    let s = input.trim();
    if s.is_empty() || s.len() > MAX_HANDLE_LEN || s.chars().any(char::is_control) {
        return None;
    }
    match platform {
        "salesforce" => salesforce_id(s),
        "hubspot" => {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let t = s.trim_start_matches('0');
            Some(if t.is_empty() { "0" } else { t }.to_string())
        }
        _ => Some(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Normalizer {
        Normalizer::default()
    }

    fn email(s: &str) -> Option<String> {
        n().email(s).map(|e| e.address)
    }

    #[test]
    fn emails_trim_and_lower_case() {
        assert_eq!(
            email("  Ann.Lee@Acme.COM \n").as_deref(),
            Some("ann.lee@acme.com")
        );
        assert_eq!(
            email("mailto:ann@acme.com").as_deref(),
            Some("ann@acme.com")
        );
        assert_eq!(
            email("Ann Lee <Ann@Acme.com>").as_deref(),
            Some("ann@acme.com")
        );
        assert_eq!(email("ann@acme.com.").as_deref(), Some("ann@acme.com"));
        assert_eq!(
            email("ann@bücher.de").as_deref(),
            Some("ann@xn--bcher-kva.de")
        );
    }

    #[test]
    fn gmail_dots_and_tags_only_at_gmail() {
        assert_eq!(
            email("John.Smith+news@GoogleMail.com").as_deref(),
            Some("johnsmith@gmail.com")
        );
        assert_eq!(
            email("j.o.h.n.smith@gmail.com").as_deref(),
            Some("johnsmith@gmail.com")
        );
        // Dots matter everywhere else.
        assert_eq!(
            email("john.smith@outlook.com").as_deref(),
            Some("john.smith@outlook.com")
        );
        assert_ne!(
            email("john.smith@outlook.com"),
            email("johnsmith@outlook.com")
        );
        // +tags only where the provider documents them.
        assert_eq!(
            email("ann+x@fastmail.com").as_deref(),
            Some("ann@fastmail.com")
        );
        assert_eq!(email("ann+x@proton.me").as_deref(), Some("ann@proton.me"));
        assert_eq!(email("ann+x@acme.com").as_deref(), Some("ann+x@acme.com"));
        assert_eq!(email("ann+x@yahoo.com").as_deref(), Some("ann+x@yahoo.com"));
    }

    #[test]
    fn bad_emails_are_no_identity() {
        for s in [
            "",
            "   ",
            "ann",
            "@acme.com",
            "ann@",
            "ann@localhost",
            "ann@1.2.3.4",
            "ann@[1.2.3.4]",
            "a b@acme.com",
            "ann@ac me.com",
            "ann@-acme.com",
            "+tag@gmail.com",
            "...@gmail.com",
            "a@b@acme.com",
        ] {
            assert_eq!(email(s), None, "{s:?}");
        }
    }

    #[test]
    fn role_addresses_are_flagged() {
        assert!(n().email("Info@acme.com").unwrap().role);
        assert!(n().email("sales@acme.com").unwrap().role);
        assert!(!n().email("ann@acme.com").unwrap().role);
    }

    #[test]
    fn domains_reduce_to_the_registrable_domain() {
        let cases = [
            ("https://www.Acme.com/about?x=1", "acme.com"),
            ("acme.com", "acme.com"),
            ("shop.acme.com:8443", "acme.com"),
            ("http://acme.co.uk", "acme.co.uk"),
            ("www.sub.acme.co.uk/", "acme.co.uk"),
            ("acme.github.io", "acme.github.io"),
            ("ann@acme.com", "acme.com"),
            ("ACME.COM.", "acme.com"),
        ];
        for (input, want) in cases {
            assert_eq!(registrable_domain(input).as_deref(), Some(want), "{input}");
        }
        for bad in [
            "",
            "localhost",
            "com",
            "n/a",
            "1.2.3.4",
            "http://[::1]/",
            "a..b",
        ] {
            assert_eq!(registrable_domain(bad), None, "{bad}");
        }
    }

    #[test]
    fn generic_domains_include_brands_under_any_suffix() {
        let n = n();
        for d in [
            "gmail.com",
            "yahoo.co.uk",
            "hotmail.fr",
            "gmx.at",
            "linkedin.com",
        ] {
            assert!(n.is_generic(d), "{d}");
        }
        for d in ["acme.com", "livenation.com", "acme.co.uk"] {
            assert!(!n.is_generic(d), "{d}");
        }
        let e = n.email("ann@mail.acme.com").unwrap();
        assert_eq!(n.email_org_domain(&e).as_deref(), Some("acme.com"));
        let g = n.email("ann@gmail.com").unwrap();
        assert_eq!(n.email_org_domain(&g), None);
    }

    #[test]
    fn phones_to_e164() {
        let us = Region::from_str("us").unwrap();
        let gb = Region::from_str("GB").unwrap();
        for s in [
            "+1 415 555 2671",
            "(415) 555-2671",
            "415.555.2671",
            "1-415-555-2671",
            "+14155552671",
            "tel:+1-415-555-2671",
        ] {
            assert_eq!(phone(s, Some(us)).as_deref(), Some("+14155552671"), "{s}");
        }
        assert_eq!(
            phone("020 7946 0018", Some(gb)).as_deref(),
            Some("+442079460018")
        );
        assert_eq!(
            phone("+44 (0)20 7946 0018", Some(us)).as_deref(),
            Some("+442079460018")
        );
        // No prefix and no region: no identity.
        assert_eq!(phone("4155552671", None), None);
        assert_eq!(phone("+14155552671", None).as_deref(), Some("+14155552671"));
        // Extensions keep colleagues apart.
        assert_eq!(
            phone("+1 415 555 2671 ext. 12", Some(us)).as_deref(),
            Some("+14155552671;ext=12")
        );
        // ...and the key, read again, is itself (the parser does not read ";ext=").
        assert_eq!(
            phone("+14155552671;ext=12", None).as_deref(),
            Some("+14155552671;ext=12")
        );
        assert_eq!(phone("+14155552671;ext=", None), None);
        // Found by the property test: libphonenumber reads this in Switzerland as
        // "+4150030;ext=0", which it then refuses; the key given out must be a fixpoint.
        let ch = Region::from_str("CH").unwrap();
        let odd = phone("500e0#0", Some(ch));
        if let Some(p) = &odd {
            assert_eq!(phone(p, Some(ch)).as_ref(), Some(p));
            assert_eq!(phone(p, None).as_ref(), Some(p));
        }
        for bad in ["", "n/a", "12", "+", "  2 22#:", "003-836-4618x3001"] {
            let _ = phone(bad, Some(us));
        }
        assert_eq!(phone("n/a", Some(us)), None);
        assert_eq!(phone("12", Some(us)), None);
    }

    #[test]
    fn handles() {
        assert_eq!(
            handle("Twitter", "@AnnLee"),
            Some(("twitter".into(), "annlee".into()))
        );
        assert_eq!(
            handle("x", "https://x.com/AnnLee/"),
            Some(("twitter".into(), "annlee".into()))
        );
        assert_eq!(
            handle("intercom", " 5f1AbC "),
            Some(("intercom".into(), "5f1AbC".into()))
        );
        assert_eq!(handle("", "x"), None);
        assert_eq!(handle("twitter", "@"), None);
    }

    #[test]
    fn salesforce_ids() {
        let id15 = "001d000000AbCdE";
        let id18 = salesforce_id18(id15).unwrap();
        assert_eq!(id18.len(), 18);
        assert_eq!(salesforce_id(&id18).as_deref(), Some(id15));
        assert_eq!(
            salesforce_id(&id18.to_ascii_lowercase()).as_deref(),
            Some(id15)
        );
        assert_eq!(
            salesforce_id(&id18.to_ascii_uppercase()).as_deref(),
            Some(id15)
        );
        assert_eq!(salesforce_id(id15).as_deref(), Some(id15));
        assert_eq!(salesforce_id("001d000000AbCdE!!!"), None);
        assert_eq!(salesforce_id("short"), None);
        // A checksum saying "upper case" over a digit is no Salesforce id.
        assert_eq!(salesforce_id("000000000000000ZZZ"), None);
        assert_eq!(platform_id("hubspot", " 00123 ").as_deref(), Some("123"));
        assert_eq!(platform_id("hubspot", "12a"), None);
    }
}
