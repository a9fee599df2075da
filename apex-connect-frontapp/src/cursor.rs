//! Typed cursors, one per stream, each turned into an opaque [`CursorToken`] at the boundary.
//!
//! A cursor stores `next` links exactly as Front gave them; on resume the link's host is
//! checked again against the connection's API hosts before anything is sent to it (a stored
//! cursor is input like any other). Timestamps are Unix milliseconds.
//!
//! [`CursorToken`]: apex_connect_core::CursorToken

use std::collections::VecDeque;

use apex_connect_core::SyncCursor;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// A position in the company events feed, used by the incremental phase of conversations,
/// messages and comments, and by the events stream itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventsPosition {
    /// The walk in progress reads events emitted after this time (minus the lookback when
    /// the walk started). `None`: from the beginning of the feed.
    pub after_ms: Option<i64>,
    /// The next page of the walk in progress (a Front `next` link); `None` when the walk has
    /// not started.
    pub next: Option<String>,
    /// The newest `emitted_at` seen in the walk in progress; becomes `after_ms` when the walk
    /// ends.
    pub high_water_ms: Option<i64>,
    /// Events already read whose `emitted_at` (Unix ms) is within the lookback of
    /// `high_water_ms`, as `(id, emitted_at_ms)`: the next walk re-reads that window (events
    /// can become visible late) and skips these ids, so a re-read yields no duplicates. At
    /// most [`MAX_SEEN_EVENTS`] (the newest); absent from tokens written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<(String, i64)>,
}

/// Most event ids an [`EventsPosition`] remembers for deduplicating its lookback window (a
/// busier window re-reads its oldest events, which the sinks' upserts absorb).
pub const MAX_SEEN_EVENTS: usize = 500;

impl EventsPosition {
    /// A position that starts reading events after `after_ms`.
    pub fn after(after_ms: Option<i64>) -> Self {
        EventsPosition {
            after_ms,
            next: None,
            high_water_ms: after_ms,
            seen: Vec::new(),
        }
    }

    /// Whether event `id` was read by an earlier walk (within its lookback window).
    pub fn has_seen(&self, id: &str) -> bool {
        self.seen.iter().any(|(s, _)| s == id)
    }

    /// Records events just read (`(id, emitted_at_ms)`, oldest first) and forgets those older
    /// than `lookback_ms` before the high-water mark, keeping at most [`MAX_SEEN_EVENTS`].
    pub fn remember<I>(&mut self, events: I, lookback_ms: i64)
    where
        I: IntoIterator<Item = (String, i64)>,
    {
        self.seen.extend(events);
        if let Some(high) = self.high_water_ms {
            let from = high.saturating_sub(lookback_ms);
            self.seen.retain(|(_, at)| *at >= from);
        }
        if self.seen.len() > MAX_SEEN_EVENTS {
            self.seen.sort_by_key(|(_, at)| *at);
            let extra = self.seen.len() - MAX_SEEN_EVENTS;
            self.seen.drain(..extra);
        }
    }
}

/// Cursor of a top-level list (`/conversations`, `/contacts`, `/tags`) during its backfill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ListPosition {
    /// The next page link; `None` before the first page.
    pub next: Option<String>,
    /// When the backfill started (Unix ms): the incremental phase reads changes from then
    /// (minus the lookback), so nothing that changed during a long backfill is missed.
    pub started_at_ms: i64,
}

impl ListPosition {
    /// A position at `next` (`None`: the first page) of a backfill started at `started_at_ms`.
    pub fn new(next: Option<String>, started_at_ms: i64) -> Self {
        ListPosition {
            next,
            started_at_ms,
        }
    }
}

/// Cursor of the nested walk used by messages and comments: conversations page by page, and
/// in each conversation its messages (or comments) page by page.
///
/// The ids of the conversations page being walked are kept in the cursor once the page was
/// read, so the walk reads each conversations page exactly once, resumes exactly where it
/// stopped (also in a fresh process), and is not disturbed by conversations moving in the
/// list meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NestedPosition {
    /// The conversations page being walked (`None`: the first page).
    pub conversations_page: Option<String>,
    /// The conversations of that page not finished yet, in list order, the one being read
    /// first; `None` until the page was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<VecDeque<String>>,
    /// The conversations page after this one (Front's `next` link), once this page was read;
    /// `None` then means this is the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
    /// The next page of the first pending conversation's children; `None`: its first page.
    pub children_next: Option<String>,
    /// Only in cursors upgraded from version 1: the conversation the walk was in. When the
    /// page is read again, the walk resumes at it (or, if it left the page, at the start of
    /// the page: duplicates are harmless, losses are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<String>,
    /// When the backfill started (Unix ms).
    pub started_at_ms: i64,
}

impl NestedPosition {
    /// The start of a walk begun at `started_at_ms`.
    pub fn start(started_at_ms: i64) -> Self {
        NestedPosition {
            conversations_page: None,
            pending: None,
            next_page: None,
            children_next: None,
            resume_at: None,
            started_at_ms,
        }
    }

    /// The start of the conversations page at `link` (not read yet).
    pub fn at_page(link: Option<String>, started_at_ms: i64) -> Self {
        NestedPosition {
            conversations_page: link,
            ..NestedPosition::start(started_at_ms)
        }
    }
}

/// Version 1 of [`NestedPosition`]: an index into the conversations page, read again on
/// every resume.
#[derive(Deserialize)]
struct NestedPositionV1 {
    conversations_page: Option<String>,
    #[allow(dead_code)]
    index: usize,
    conversation_id: Option<String>,
    children_next: Option<String>,
    started_at_ms: i64,
}

impl From<NestedPositionV1> for NestedPosition {
    fn from(v1: NestedPositionV1) -> Self {
        NestedPosition {
            conversations_page: v1.conversations_page,
            pending: None,
            next_page: None,
            children_next: v1.children_next,
            resume_at: v1.conversation_id,
            started_at_ms: v1.started_at_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum NestedCursorV1 {
    Backfill(NestedPositionV1),
    Events(EventsPosition),
}

fn decode_v1(payload: &str) -> Option<NestedCursorV1> {
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Cursor of the `conversations` stream (`KIND = "frontapp.conversations"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConversationsCursor {
    /// Walking `GET /conversations`.
    Backfill(ListPosition),
    /// Following `/events` and fetching the conversations they name.
    Events(EventsPosition),
}

impl SyncCursor for ConversationsCursor {
    const KIND: &'static str = "frontapp.conversations";
    const VERSION: u32 = 1;
}

/// Cursor of the `messages` stream (`KIND = "frontapp.messages"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum MessagesCursor {
    /// Walking conversations, then each one's messages.
    Backfill(NestedPosition),
    /// Following `/events` (`inbound`, `outbound`, ... ) and fetching the messages named.
    Events(EventsPosition),
}

impl SyncCursor for MessagesCursor {
    const KIND: &'static str = "frontapp.messages";
    const VERSION: u32 = 2;

    /// Version 1 tokens (an index into the conversations page) resume at the conversation
    /// they name.
    fn upgrade(version: u32, payload: &str) -> Option<Self> {
        match (version, decode_v1(payload)?) {
            (1, NestedCursorV1::Backfill(p)) => Some(MessagesCursor::Backfill(p.into())),
            (1, NestedCursorV1::Events(p)) => Some(MessagesCursor::Events(p)),
            _ => None,
        }
    }
}

/// Cursor of the `comments` stream (`KIND = "frontapp.comments"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum CommentsCursor {
    /// Walking conversations, then each one's comments.
    Backfill(NestedPosition),
    /// Following `/events` (`comment`, `mention`) and fetching the comments named.
    Events(EventsPosition),
}

impl SyncCursor for CommentsCursor {
    const KIND: &'static str = "frontapp.comments";
    const VERSION: u32 = 2;

    /// As [`MessagesCursor::upgrade`].
    fn upgrade(version: u32, payload: &str) -> Option<Self> {
        match (version, decode_v1(payload)?) {
            (1, NestedCursorV1::Backfill(p)) => Some(CommentsCursor::Backfill(p.into())),
            (1, NestedCursorV1::Events(p)) => Some(CommentsCursor::Events(p)),
            _ => None,
        }
    }
}

/// Cursor of the `contacts` stream (`KIND = "frontapp.contacts"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContactsCursor {
    /// Walking `GET /contacts`.
    Backfill(ListPosition),
    /// Walking `GET /contacts?q[updated_after]=..` (the walk started at `started_at_ms`
    /// reads contacts updated after `after_ms` minus the lookback).
    Updated {
        /// Lower bound of this walk, Unix ms.
        after_ms: i64,
        /// Next page of the walk; `None` before its first page.
        next: Option<String>,
        /// When this walk started: the next walk's lower bound.
        started_at_ms: i64,
    },
}

impl SyncCursor for ContactsCursor {
    const KIND: &'static str = "frontapp.contacts";
    const VERSION: u32 = 1;
}

/// Cursor of the `tags` stream (`KIND = "frontapp.tags"`). Tags are few, so each walk lists
/// them all; after the first walk only tags updated since the previous walk (minus the
/// lookback) are emitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TagsCursor {
    /// Emit only tags updated after this time; `None` on the first walk (emit all).
    pub since_ms: Option<i64>,
    /// Next page of the walk in progress.
    pub next: Option<String>,
    /// When the walk in progress started.
    pub started_at_ms: i64,
}

impl SyncCursor for TagsCursor {
    const KIND: &'static str = "frontapp.tags";
    const VERSION: u32 = 1;
}

/// Cursor of a full-refresh list (`teammates`, `inboxes`): the next link of the walk in
/// progress, and whether a walk completed (then the next read starts a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefreshPosition {
    /// Next page of the walk in progress.
    pub next: Option<String>,
    /// When the last complete walk ended, Unix ms.
    pub completed_at_ms: Option<i64>,
}

/// Cursor of the `teammates` stream (`KIND = "frontapp.teammates"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TeammatesCursor(pub RefreshPosition);

impl SyncCursor for TeammatesCursor {
    const KIND: &'static str = "frontapp.teammates";
    const VERSION: u32 = 1;
}

/// Cursor of the `inboxes` stream (`KIND = "frontapp.inboxes"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InboxesCursor(pub RefreshPosition);

impl SyncCursor for InboxesCursor {
    const KIND: &'static str = "frontapp.inboxes";
    const VERSION: u32 = 1;
}

/// Cursor of the `events` stream (`KIND = "frontapp.events"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventsCursor(pub EventsPosition);

impl SyncCursor for EventsCursor {
    const KIND: &'static str = "frontapp.events";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::{CursorToken, ErrorKind};

    #[test]
    fn roundtrip_and_foreign_tokens() {
        let mut pos = NestedPosition::at_page(
            Some("https://acme.api.frontapp.com/conversations?page_token=x".into()),
            5,
        );
        pos.pending = Some(["cnv_1".to_string(), "cnv_2".to_string()].into());
        let c = MessagesCursor::Backfill(pos);
        let t = c.to_token();
        assert!(t.as_str().starts_with("frontapp.messages.v2."));
        assert_eq!(MessagesCursor::from_token(&t).unwrap(), c);

        let e = ConversationsCursor::from_token(&t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);

        let v3 = CursorToken::from_string(t.as_str().replace(".v2.", ".v3."));
        let e = MessagesCursor::from_token(&v3).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("newer version"), "{e}");

        let ev = EventsCursor(EventsPosition::after(Some(10))).to_token();
        assert_eq!(EventsCursor::from_token(&ev).unwrap().0.after_ms, Some(10));
    }

    /// A version 1 token (written before the conversation ids were kept in the cursor)
    /// still resumes: at the conversation it names, with its children's next link.
    #[test]
    fn version_1_nested_tokens_upgrade() {
        let v1 = serde_json::json!({"phase": "backfill", "conversations_page": "https://acme.api.frontapp.com/conversations?page_token=p2",
            "index": 3, "conversation_id": "cnv_9", "children_next": "https://acme.api.frontapp.com/conversations/cnv_9/messages?page_token=m2",
            "started_at_ms": 77});
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v1).unwrap());
        let token = CursorToken::from_string(format!("frontapp.messages.v1.{payload}"));
        let MessagesCursor::Backfill(p) = MessagesCursor::from_token(&token).unwrap() else {
            panic!("backfill expected");
        };
        assert_eq!(p.resume_at.as_deref(), Some("cnv_9"));
        assert_eq!(p.pending, None, "the page is read again");
        assert!(p.children_next.unwrap().ends_with("page_token=m2"));
        assert_eq!(p.started_at_ms, 77);
        let ev =
            serde_json::json!({"phase": "events", "after_ms": 5, "next": null, "high_water_ms": 5});
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&ev).unwrap());
        let token = CursorToken::from_string(format!("frontapp.comments.v1.{payload}"));
        assert!(matches!(
            CommentsCursor::from_token(&token).unwrap(),
            CommentsCursor::Events(EventsPosition {
                after_ms: Some(5),
                ..
            })
        ));
        let junk = CursorToken::from_string("frontapp.comments.v1.e30");
        assert_eq!(
            CommentsCursor::from_token(&junk).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn events_position_remembers_only_the_lookback_window() {
        let mut p = EventsPosition::after(Some(0));
        p.high_water_ms = Some(100_000);
        p.remember(
            [("evt_a".to_string(), 10_000), ("evt_b".to_string(), 50_000)],
            60_000,
        );
        assert!(!p.has_seen("evt_a"), "older than the lookback: forgotten");
        assert!(p.has_seen("evt_b"));
        // Old tokens (without `seen`) still decode; an empty memory is not written.
        let t = EventsCursor(EventsPosition::after(Some(5))).to_token();
        let back = EventsCursor::from_token(&t).unwrap();
        assert!(back.0.seen.is_empty());
        // Never more than MAX_SEEN_EVENTS, the newest kept.
        p.remember(
            (0..MAX_SEEN_EVENTS as i64 + 10).map(|i| (format!("evt_{i}"), 90_000 + i)),
            60_000,
        );
        assert_eq!(p.seen.len(), MAX_SEEN_EVENTS);
        assert!(p.has_seen(&format!("evt_{}", MAX_SEEN_EVENTS + 9)));
        assert!(!p.has_seen("evt_b"));
    }
}
