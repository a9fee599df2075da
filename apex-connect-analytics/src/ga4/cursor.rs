//! Typed cursors, turned into opaque [`CursorToken`]s at the boundary.
//!
//! [`CursorToken`]: apex_connect_core::CursorToken

use apex_connect_core::SyncCursor;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Where a report walk is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReportPosition {
    /// Reading the window that starts at `from` (`to` once its first page was asked for),
    /// from row `offset`.
    Window {
        /// First day of the window.
        from: NaiveDate,
        /// Last day of the window (inclusive), once opened.
        to: Option<NaiveDate>,
        /// The next row to ask for.
        offset: u64,
    },
    /// The walk reached today: `through` was the last day read. The next read re-reads the
    /// freshness window ending there.
    CaughtUp {
        /// The last day read.
        through: NaiveDate,
    },
}

/// Cursor of a report stream (`KIND = "ga4.report"`): built-in and user-defined reports. It
/// names its stream, so a cursor of another report is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReportCursor {
    /// The stream.
    pub stream: String,
    /// The position.
    pub position: ReportPosition,
}

impl SyncCursor for ReportCursor {
    const KIND: &'static str = "ga4.report";
    const VERSION: u32 = 1;
}

impl ReportCursor {
    /// A cursor of `stream` at `position`.
    pub fn new(stream: impl Into<String>, position: ReportPosition) -> Self {
        ReportCursor {
            stream: stream.into(),
            position,
        }
    }
}

/// Cursor of the `funnels` stream (`KIND = "ga4.funnels"`): one request per funnel and day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FunnelsCursor {
    /// Funnel `index` (of the settings' funnels), on `day`, in a walk from `walk_from`.
    Walk {
        /// The funnel.
        index: usize,
        /// The walk's first day (every funnel starts there).
        walk_from: NaiveDate,
        /// The next day to read.
        day: NaiveDate,
    },
    /// Every funnel was read through `through`.
    CaughtUp {
        /// The last day read.
        through: NaiveDate,
    },
}

impl SyncCursor for FunnelsCursor {
    const KIND: &'static str = "ga4.funnels";
    const VERSION: u32 = 1;
}

/// Cursor of the `cohorts` stream (`KIND = "ga4.cohorts"`): a full refresh each walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CohortsCursor {
    /// Completed walks.
    pub walks: u64,
    /// The next row of the walk in progress (`0`: a new walk).
    pub offset: u64,
}

impl SyncCursor for CohortsCursor {
    const KIND: &'static str = "ga4.cohorts";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let c = ReportCursor::new(
            "pages",
            ReportPosition::Window {
                from: "2024-01-01".parse().unwrap(),
                to: None,
                offset: 10_000,
            },
        );
        assert_eq!(ReportCursor::from_token(&c.to_token()).unwrap(), c);
        assert!(FunnelsCursor::from_token(&c.to_token()).is_err());
    }
}
