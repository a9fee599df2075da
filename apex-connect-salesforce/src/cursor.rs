//! [`SalesforceCursor`]: where a stream stopped, as an opaque token.
//!
//! A stream alternates between two states:
//! - **caught up**: [`SalesforceCursor::mark`] is the last record read (its replication
//!   stamp and `Id`) and `deletes_from_ms` the point up to which deletes were read; the next
//!   read starts a new walk from there (minus the lookback; with no lookback, after the mark,
//!   or at the start of the mark's second when that second was still running when read);
//! - **walking**: [`SalesforceCursor::walk`] holds the walk in progress: its bounds, the
//!   query window (halved after `QUERY_TIMEOUT`), and where it is (the `nextRecordsUrl` of a
//!   REST query, or the Bulk job and locator), so a fresh connector resumes exactly there.

use apex_connect_core::{Error, ErrorKind, Result, StreamId, SyncCursor};
use serde::{Deserialize, Serialize};

/// A position in a stream: a replication stamp (Unix ms) and the record `Id` (keyset order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mark {
    /// The replication field's value, Unix milliseconds.
    pub ms: i64,
    /// The record's `Id`.
    pub id: String,
}

impl Mark {
    /// A mark at `ms`, `id`.
    pub fn new(ms: i64, id: impl Into<String>) -> Self {
        Mark { ms, id: id.into() }
    }

    /// Whether `(ms, id)` is at or before this mark in keyset order.
    pub fn covers(&self, ms: i64, id: &str) -> bool {
        (ms, id) <= (self.ms, self.id.as_str())
    }
}

/// What a walk reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalkKind {
    /// Live records (`query`, or a Bulk query job).
    Upserts,
    /// Deleted records (`queryAll ... IsDeleted = TRUE`, or `getDeleted`).
    Deletes,
}

/// A Bulk API 2.0 query job a walk reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkState {
    /// The job id.
    pub job_id: String,
    /// The locator of the next results page (`None`: the first page).
    pub locator: Option<String>,
}

/// A walk in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Walk {
    /// Upserts or deletes.
    pub kind: WalkKind,
    /// Whether the walk started from no cursor (a full read).
    pub full: bool,
    /// The lower bound of the next query (`stamp >= lo_ms`) when no record was read yet.
    pub lo_ms: i64,
    /// The walk's upper bound (`stamp <= hi_ms`), fixed when it started.
    pub hi_ms: i64,
    /// The current query's upper bound (below `hi_ms` after a `QUERY_TIMEOUT` halved it).
    pub window_hi_ms: i64,
    /// Records at or before this mark were read before the walk started: skipped (the
    /// boundary second is re-read with `>=`).
    pub skip_to: Option<Mark>,
    /// The last record read in this walk (keyset continuation point).
    pub last: Option<Mark>,
    /// The REST `nextRecordsUrl` of the running query.
    pub next_url: Option<String>,
    /// The Bulk job, when the walk goes through Bulk API 2.0.
    pub bulk: Option<BulkState>,
    /// Whether this walk must not use Bulk (its job failed or vanished).
    #[serde(default)]
    pub rest_only: bool,
    /// Deletes walks: whether the `queryAll` part is done (then `getDeleted`, if used).
    #[serde(default)]
    pub query_all_done: bool,
    /// The span of the current query window after `QUERY_TIMEOUT` made it smaller (ms); the
    /// next window doubles it until the walk's upper bound is reached.
    #[serde(default)]
    pub window_ms: Option<i64>,
}

/// The cursor of one Salesforce stream (one sObject).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesforceCursor {
    /// The object (stream) the cursor belongs to.
    pub object: String,
    /// The last record read by a finished walk.
    pub mark: Option<Mark>,
    /// Whether the mark's second had not ended when the walk that read it started: a change
    /// later in that second carries the same stamp (second precision) and may sort before the
    /// mark, so the next walk re-reads that whole second instead of continuing after the mark.
    #[serde(default)]
    pub mark_open: bool,
    /// Deletes were read up to here (Unix ms).
    pub deletes_from_ms: Option<i64>,
    /// The walk in progress.
    pub walk: Option<Walk>,
}

impl SyncCursor for SalesforceCursor {
    const KIND: &'static str = "salesforce.object";
    const VERSION: u32 = 1;
}

impl SalesforceCursor {
    /// A cursor of `object` that has read nothing.
    pub fn new(object: impl Into<String>) -> Self {
        SalesforceCursor {
            object: object.into(),
            mark: None,
            mark_open: false,
            deletes_from_ms: None,
            walk: None,
        }
    }

    /// Decodes `token`, checking it belongs to `stream`.
    ///
    /// # Errors
    /// `InvalidInput` for a token of another kind, version or stream.
    pub fn for_stream(token: &apex_connect_core::CursorToken, stream: &StreamId) -> Result<Self> {
        let c = SalesforceCursor::from_token(token)?;
        if c.object != stream.as_str() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "cursor token belongs to another stream",
            )
            .with_context("stream", stream)
            .with_context("cursor_stream", &c.object));
        }
        if let Some(w) = &c.walk
            && (w.window_hi_ms > w.hi_ms || w.lo_ms > w.hi_ms.saturating_add(1000))
        {
            return Err(
                Error::new(ErrorKind::InvalidInput, "cursor token is inconsistent")
                    .with_context("stream", stream),
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_stream_check() {
        let mut c = SalesforceCursor::new("Account");
        c.mark = Some(Mark::new(10, "001"));
        c.walk = Some(Walk {
            kind: WalkKind::Upserts,
            full: false,
            lo_ms: 0,
            hi_ms: 100,
            window_hi_ms: 50,
            skip_to: None,
            last: None,
            next_url: Some("/services/data/v64.0/query/01g-2000".into()),
            bulk: None,
            rest_only: false,
            query_all_done: false,
            window_ms: None,
        });
        let t = c.to_token();
        assert_eq!(
            SalesforceCursor::for_stream(&t, &StreamId::from("Account")).unwrap(),
            c
        );
        let e = SalesforceCursor::for_stream(&t, &StreamId::from("Contact")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn keyset_order() {
        let m = Mark::new(1000, "001B");
        assert!(m.covers(1000, "001A"));
        assert!(m.covers(1000, "001B"));
        assert!(!m.covers(1000, "001C"));
        assert!(m.covers(999, "zzz"));
        assert!(!m.covers(1001, "000"));
    }
}
