//! Guards for walks over pages a server controls: cycles, pages that bring nothing, pages
//! far larger than asked for.
//!
//! A server decides the `next` links and page tokens a connector follows, and how many
//! results a page holds. A hostile or broken one can send `A -> B -> A` forever, an endless
//! run of empty pages with fresh tokens, or a page of a million tiny records where 100 were
//! asked for. [`LinkGuard`] and [`check_page_len`] turn each of these into a typed error
//! (`InvalidResponse`, permanent) instead of a loop or a memory spike.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};

use crate::error::{Error, ErrorKind, Result, redact_url};

/// Remembers the links and page tokens of one walk and refuses a repeat; counts pages in a
/// row that bring no new record.
///
/// Create one per read (or per nested walk, e.g. the messages of one conversation), call
/// [`check_link`](Self::check_link) before following each `next` link or page token, and
/// [`record_page`](Self::record_page) after each page with the number of records it
/// brought that the walk had not seen yet.
///
/// # Behavior
/// - The first link or token the walk follows is remembered too: a later page pointing back
///   to it is a cycle.
/// - Memory is bounded: only a 64-bit keyed hash (SipHash with a random key, so a server
///   cannot craft collisions) of each link is kept, at most
///   [`max_links`](Self::with_max_links) of them (default 10,000, about 80 KB of hashes plus
///   the set's overhead). Past that, the oldest are forgotten, so a cycle longer than that
///   is no longer caught as a repeat; [`record_page`](Self::record_page) still catches it
///   when its pages bring nothing new.
/// - Links are compared as sent (surrounding whitespace trimmed): a server that varies a
///   parameter to dodge the repeat check is caught by the no-new-records counter.
/// - A page that brings at least one new record resets the no-new-records counter.
///
/// # Errors
/// `InvalidResponse` (permanent): "pagination cycle" for a repeated link (with context
/// `link`, the link without its query string), and "pagination brings no new records" once
/// more than [`max_stale_pages`](Self::with_max_stale_pages) pages in a row (default 3)
/// brought nothing new.
///
/// # Examples
///
/// ```
/// use apex_connect_core::http::LinkGuard;
///
/// let mut guard = LinkGuard::new();
/// guard.check_link("https://api.example.com/items?page=2").unwrap();
/// guard.record_page(100).unwrap();
/// guard.check_link("https://api.example.com/items?page=3").unwrap();
/// guard.record_page(100).unwrap();
/// // The server points back to page 2: a cycle.
/// let e = guard.check_link("https://api.example.com/items?page=2").unwrap_err();
/// assert!(e.message().contains("pagination cycle"));
/// ```
#[derive(Clone)]
pub struct LinkGuard {
    hasher: RandomState,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    max_links: usize,
    stale_pages: u32,
    max_stale_pages: u32,
    pages: u64,
}

/// Default for [`LinkGuard::with_max_links`].
pub const DEFAULT_MAX_LINKS: usize = 10_000;
/// Default for [`LinkGuard::with_max_stale_pages`].
pub const DEFAULT_MAX_STALE_PAGES: u32 = 3;

impl LinkGuard {
    /// A guard with the defaults: 10,000 links remembered, 3 pages in a row without a new
    /// record tolerated.
    pub fn new() -> Self {
        LinkGuard {
            hasher: RandomState::new(),
            seen: HashSet::new(),
            order: VecDeque::new(),
            max_links: DEFAULT_MAX_LINKS,
            stale_pages: 0,
            max_stale_pages: DEFAULT_MAX_STALE_PAGES,
            pages: 0,
        }
    }

    /// Remembers at most `n` links (at least 1); the oldest are forgotten first.
    pub fn with_max_links(mut self, n: usize) -> Self {
        self.max_links = n.max(1);
        while self.order.len() > self.max_links {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self
    }

    /// Tolerates `n` pages in a row that bring no new record; the next one is an error.
    /// `0` makes every page without a new record an error.
    pub fn with_max_stale_pages(mut self, n: u32) -> Self {
        self.max_stale_pages = n;
        self
    }

    /// Checks a `next` link or page token before it is followed, and remembers it.
    ///
    /// # Errors
    /// `InvalidResponse` (permanent) "pagination cycle" if this walk already followed it.
    pub fn check_link(&mut self, link: &str) -> Result<()> {
        let link = link.trim();
        let h = self.hasher.hash_one(link);
        if self.seen.contains(&h) {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                "pagination cycle: the server sent a link or page token this walk already followed",
            )
            .permanent()
            .with_context("link", link_for_context(link))
            .with_context("pages", self.pages));
        }
        if self.order.len() >= self.max_links
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(h);
        self.order.push_back(h);
        Ok(())
    }

    /// Records a page that brought `new_records` records this walk had not seen.
    ///
    /// # Errors
    /// `InvalidResponse` (permanent) once more than `max_stale_pages` pages in a row brought
    /// no new record.
    pub fn record_page(&mut self, new_records: usize) -> Result<()> {
        self.pages = self.pages.saturating_add(1);
        if new_records > 0 {
            self.stale_pages = 0;
            return Ok(());
        }
        self.stale_pages = self.stale_pages.saturating_add(1);
        if self.stale_pages > self.max_stale_pages {
            return Err(Error::new(
                ErrorKind::InvalidResponse,
                "pagination brings no new records: the server keeps sending pages without \
                 a record this walk had not seen",
            )
            .permanent()
            .with_context("pages_without_new_records", self.stale_pages)
            .with_context("pages", self.pages));
        }
        Ok(())
    }

    /// How many links or tokens are remembered now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// How many pages were recorded with [`record_page`](Self::record_page).
    pub fn pages(&self) -> u64 {
        self.pages
    }
}

impl Default for LinkGuard {
    fn default() -> Self {
        LinkGuard::new()
    }
}

impl fmt::Debug for LinkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkGuard")
            .field("remembered", &self.seen.len())
            .field("max_links", &self.max_links)
            .field("stale_pages", &self.stale_pages)
            .field("max_stale_pages", &self.max_stale_pages)
            .field("pages", &self.pages)
            .finish()
    }
}

/// How many results a page may hold beyond the `limit` asked for: 10 % of the limit, and
/// at least 5.
pub fn page_len_slack(limit: usize) -> usize {
    (limit / 10).max(5)
}

/// Checks that a page holding `got` results is not far more than the `limit` the request
/// asked for.
///
/// Memory is bounded by bytes (`max_body_bytes`) and by records: a body under the byte cap
/// can still hold a million tiny records, each of which costs far more once decoded than
/// its bytes. Connectors that ask for `limit` results call this right after decoding a page
/// (before mapping its records), and treat the error as the end of the walk.
///
/// A page may hold up to `limit + page_len_slack(limit)` results (10 % and at least 5
/// more), for platforms that round up or add a few items.
///
/// # Errors
/// `InvalidResponse` (permanent) with context `results` and `limit` when `got` is larger.
///
/// # Examples
///
/// ```
/// use apex_connect_core::http::check_page_len;
///
/// assert!(check_page_len(100, 100).is_ok());
/// assert!(check_page_len(105, 100).is_ok());
/// assert!(check_page_len(1_000_000, 100).is_err());
/// ```
pub fn check_page_len(got: usize, limit: usize) -> Result<()> {
    let allowed = limit.saturating_add(page_len_slack(limit));
    if got > allowed {
        return Err(Error::new(
            ErrorKind::InvalidResponse,
            format!("the page holds {got} results, far more than the limit of {limit} asked for"),
        )
        .permanent()
        .with_context("results", got)
        .with_context("limit", limit));
    }
    Ok(())
}

/// A link as shown in error context: no query string, fragment or userinfo, at most 200
/// characters, control characters escaped.
pub(crate) fn link_for_context(link: &str) -> String {
    const MAX: usize = 200;
    let redacted = redact_url(link);
    let mut out = String::new();
    for (i, c) in redacted.chars().enumerate() {
        if i >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_link_is_a_cycle() {
        let mut g = LinkGuard::new();
        g.check_link("https://a.example/x?page=A").unwrap();
        g.record_page(10).unwrap();
        g.check_link("https://a.example/x?page=B").unwrap();
        g.record_page(10).unwrap();
        let e = g.check_link(" https://a.example/x?page=A ").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(!e.is_temporary());
        assert!(e.message().contains("pagination cycle"), "{e}");
        assert_eq!(e.context_value("link"), Some("https://a.example/x?…"));
        assert_eq!(e.context_value("pages"), Some("2"));
        // Page tokens work the same way.
        let mut g = LinkGuard::new();
        g.check_link("tok1").unwrap();
        g.check_link("tok2").unwrap();
        assert!(g.check_link("tok1").is_err());
    }

    #[test]
    fn memory_is_capped_and_oldest_links_are_forgotten() {
        let mut g = LinkGuard::new().with_max_links(3);
        for i in 0..1000 {
            g.check_link(&format!("p{i}")).unwrap();
            assert!(g.remembered() <= 3);
        }
        // The last three are still caught; the first is forgotten.
        assert!(g.check_link("p999").is_err());
        assert!(g.check_link("p997").is_err());
        assert!(g.check_link("p0").is_ok());
        let g = LinkGuard::new().with_max_links(0);
        assert_eq!(g.max_links, 1);
    }

    #[test]
    fn stale_pages_in_a_row_are_an_error() {
        let mut g = LinkGuard::new().with_max_stale_pages(2);
        g.record_page(0).unwrap();
        g.record_page(0).unwrap();
        g.record_page(1).unwrap(); // resets the run
        g.record_page(0).unwrap();
        g.record_page(0).unwrap();
        let e = g.record_page(0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(!e.is_temporary());
        assert!(e.message().contains("no new records"), "{e}");
        assert_eq!(e.context_value("pages_without_new_records"), Some("3"));
        assert_eq!(g.pages(), 6);
        let mut strict = LinkGuard::new().with_max_stale_pages(0);
        assert!(strict.record_page(0).is_err());
    }

    #[test]
    fn debug_shows_counts_not_links() {
        let mut g = LinkGuard::new();
        g.check_link("https://a.example/x?token=SECRET").unwrap();
        let s = format!("{g:?}");
        assert!(s.contains("remembered: 1"), "{s}");
        assert!(!s.contains("SECRET"));
    }

    #[test]
    fn page_len_allows_a_small_slack_only() {
        assert!(check_page_len(0, 100).is_ok());
        assert!(check_page_len(110, 100).is_ok());
        let e = check_page_len(111, 100).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(!e.is_temporary());
        assert_eq!(e.context_value("results"), Some("111"));
        assert_eq!(e.context_value("limit"), Some("100"));
        assert!(check_page_len(5, 1).is_ok());
        assert!(check_page_len(7, 1).is_err());
        assert!(check_page_len(usize::MAX, usize::MAX).is_ok());
        assert!(check_page_len(usize::MAX, 0).is_err());
    }

    #[test]
    fn link_context_is_redacted_bounded_and_escaped() {
        assert_eq!(
            link_for_context("https://u:p@h.example/a?token=x"),
            "https://h.example/a?…"
        );
        let long = "a".repeat(5000);
        assert_eq!(link_for_context(&long).chars().count(), 201);
        assert_eq!(link_for_context("a\nb"), "a\\nb");
    }
}
