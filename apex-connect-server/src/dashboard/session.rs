//! Dashboard sessions: the admin token exchanged for a random session id in a cookie
//! (`HttpOnly`, `SameSite=Strict`, path `/ui`), each with its own CSRF token.
//!
//! Sessions live in this process's memory (a restart logs everyone out) and are looked up by
//! the SHA-256 of the cookie, so neither a lookup's timing nor a memory dump gives a usable
//! session id. Written here rather than with a session crate: the whole of it is a bounded
//! map and two random tokens, and the crates (tower-sessions and friends) bring a store
//! abstraction and a cookie jar this one process-local map does not need.

use std::collections::HashMap;
use std::sync::Mutex;

use http::HeaderMap;
use http::header::COOKIE;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(crate) const COOKIE_NAME: &str = "apex_session";
/// How long a session lasts after its login, milliseconds (12 hours).
pub(crate) const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// Sessions held at once; the oldest is dropped beyond it.
const MAX_SESSIONS: usize = 1024;

/// A logged-in browser.
#[derive(Clone)]
pub(crate) struct Session {
    /// The token every state-changing request must carry (form field `csrf`).
    pub(crate) csrf: String,
    /// Unix ms after which the session is gone.
    pub(crate) expires_at: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("csrf", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The sessions of this process.
#[derive(Default)]
pub(crate) struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.by_hash.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Sessions").field("open", &n).finish()
    }
}

/// 32 random bytes as hex.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session; returns its id (the cookie's value) and the session.
    pub(crate) fn open(&self, now: i64) -> (String, Session) {
        let id = random_token();
        let session = Session {
            csrf: random_token(),
            expires_at: now.saturating_add(SESSION_TTL_MS),
        };
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(digest(&id), session.clone());
        (id, session)
    }

    /// The live session of the request's cookie.
    pub(crate) fn get(&self, headers: &HeaderMap, now: i64) -> Option<Session> {
        let id = cookie(headers, COOKIE_NAME)?;
        let map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&digest(id)).filter(|s| s.expires_at > now).cloned()
    }

    /// Ends the request's session.
    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE_NAME) {
            let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&digest(id));
        }
    }
}

/// Whether `given` is the session's CSRF token (constant time).
pub(crate) fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value of a session.
pub(crate) fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE_NAME}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL_MS / 1000
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE_NAME}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, cookie.parse().unwrap());
        h
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let s = Sessions::default();
        let (id, session) = s.open(1_000);
        let h = headers(&format!("theme=dark; {COOKIE_NAME}={id}"));
        assert_eq!(s.get(&h, 2_000).unwrap().csrf, session.csrf);
        assert!(s.get(&h, 1_000 + SESSION_TTL_MS).is_none(), "expired");
        assert!(
            s.get(&headers(&format!("{COOKIE_NAME}=x{id}")), 2_000)
                .is_none()
        );
        assert!(csrf_ok(&session, Some(&session.csrf)));
        assert!(!csrf_ok(&session, Some("nope")));
        assert!(!csrf_ok(&session, None));
        s.close(&h);
        assert!(s.get(&h, 2_000).is_none(), "logged out");
        assert!(!format!("{session:?}").contains(&session.csrf));
    }

    #[test]
    fn the_session_map_is_bounded() {
        let s = Sessions::default();
        for i in 0..(MAX_SESSIONS as i64 + 10) {
            s.open(1_000 + i);
        }
        assert_eq!(s.by_hash.lock().unwrap().len(), MAX_SESSIONS);
    }
}
