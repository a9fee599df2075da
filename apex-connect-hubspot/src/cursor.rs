//! `HubSpotCursor`: where a stream stopped.
//!
//! Object streams go through two phases. A first read lists every object through the v3 list
//! endpoint (`after` paging); its last page hands over to the search phase, which reads
//! objects modified since the list started (minus the lookback), sorted ascending on the
//! modified-date property, with a keyset on `(modified_after_ms, last_id)`.

use apex_connect_core::{Error, ErrorKind, Result, StreamId, SyncCursor};
use serde::{Deserialize, Serialize};

/// The typed cursor of every HubSpot stream. Opaque to hosts (see [`SyncCursor`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HubSpotCursor {
    /// The stream the cursor belongs to; a cursor of another stream is refused.
    pub stream: String,
    /// Where the stream stopped.
    pub position: Position,
}

/// Where a stream stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Position {
    /// Listing every object (full sync); `after` is the list endpoint's paging token.
    List {
        /// `paging.next.after` of the previous page.
        after: Option<String>,
        /// When the full sync started (Unix ms): the search phase starts there.
        started_ms: i64,
    },
    /// Reading changes through the search API.
    Search(SearchPosition),
    /// A stream read in several parts (owners, associations, properties): part index and
    /// paging token within it. Such streams are re-read in full by each sync.
    Parts {
        /// The index of the current part (association pair, object type).
        part: usize,
        /// Paging token within the part.
        after: Option<String>,
    },
}

/// The keyset of the search phase.
///
/// Every object with `(modified, id) <= (modified_after_ms, last_id)` (lexicographically,
/// ids compared as numbers) has been read, except that a new sync re-reads a lookback window
/// for search-indexing lag; `recent` remembers `(id, version)` of what was read in that window
/// so the overlap is not returned twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SearchPosition {
    /// The modified time (Unix ms) the keyset stands on.
    pub modified_after_ms: i64,
    /// The largest id read at exactly `modified_after_ms` (0: none yet).
    pub last_id: u64,
    /// Whether the read is inside a group of objects sharing `modified_after_ms` that did not
    /// fit in one page (then pages are sorted by id).
    #[serde(default)]
    pub tie: bool,
    /// `(id, version)` of objects read recently (within the lookback), for de-duplication.
    #[serde(default)]
    pub recent: Vec<(String, i64)>,
}

impl SyncCursor for HubSpotCursor {
    const KIND: &'static str = "hubspot";
    const VERSION: u32 = 1;
}

impl HubSpotCursor {
    /// A cursor of `stream` at `position`.
    pub fn new(stream: &StreamId, position: Position) -> Self {
        HubSpotCursor {
            stream: stream.as_str().to_string(),
            position,
        }
    }

    /// Decodes `token` and checks it belongs to `stream`.
    ///
    /// # Errors
    /// `InvalidInput` for a malformed token, one of another connector, version or stream.
    pub fn decode_for(stream: &StreamId, token: &apex_connect_core::CursorToken) -> Result<Self> {
        let c = HubSpotCursor::from_token(token)?;
        if c.stream != stream.as_str() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "cursor token belongs to another stream",
            )
            .with_context("stream", stream)
            .with_context("cursor_stream", &c.stream));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_stream_check() {
        let s = StreamId::from_static("contacts");
        let c = HubSpotCursor::new(
            &s,
            Position::Search(SearchPosition {
                modified_after_ms: 5,
                last_id: 9,
                tie: true,
                recent: vec![("9".into(), 5)],
            }),
        );
        let t = c.to_token();
        assert_eq!(HubSpotCursor::decode_for(&s, &t).unwrap(), c);
        let e = HubSpotCursor::decode_for(&StreamId::from_static("deals"), &t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
}
