//! Typed cursors, one per stream, turned into opaque [`CursorToken`]s at the boundary.
//!
//! [`CursorToken`]: apex_connect_core::CursorToken

use apex_connect_core::SyncCursor;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Where a day-window walk is (events, funnel results).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DayPosition {
    /// Exporting the window that starts at `from`. `to` is set once the window's request was
    /// made (a resume asks for the same window again); `page` counts the pages of it already
    /// returned.
    Window {
        /// First day of the window.
        from: NaiveDate,
        /// Last day of the window (inclusive), once opened.
        to: Option<NaiveDate>,
        /// Pages of this window already returned.
        page: u32,
    },
    /// The walk reached today (or `end_date`): `through` is the last day exported. The next
    /// read starts a new walk that re-exports the trailing window ending at `through`.
    CaughtUp {
        /// The last day exported.
        through: NaiveDate,
    },
}

/// Cursor of the `events` stream (`KIND = "mixpanel.events"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventsCursor(pub DayPosition);

impl SyncCursor for EventsCursor {
    const KIND: &'static str = "mixpanel.events";
    const VERSION: u32 = 1;
}

/// Where an Engage walk is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EngagePosition {
    /// The query's session (from its first page).
    pub session_id: String,
    /// The next page to ask for (the first page is 0).
    pub page: u32,
}

/// Cursor of the `profiles` stream (`KIND = "mixpanel.profiles"`): a full refresh, so the
/// cursor after the last page (`next: None`) starts the next walk from page 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProfilesCursor {
    /// The walk in progress; `None`: the last walk completed.
    pub next: Option<EngagePosition>,
    /// Completed walks so far (keeps cursors of successive walks apart).
    pub walks: u64,
}

impl EngagePosition {
    /// Page `page` of the query `session_id`.
    pub fn new(session_id: impl Into<String>, page: u32) -> Self {
        EngagePosition {
            session_id: session_id.into(),
            page,
        }
    }
}

impl ProfilesCursor {
    /// A cursor at `next` of a walk after `walks` completed ones.
    pub fn new(next: Option<EngagePosition>, walks: u64) -> Self {
        ProfilesCursor { next, walks }
    }
}

impl SyncCursor for ProfilesCursor {
    const KIND: &'static str = "mixpanel.profiles";
    const VERSION: u32 = 1;
}

/// Most cohorts or funnels a cursor remembers for one walk.
pub const MAX_LISTED: usize = 10_000;

/// Cursor of the `cohort_members` stream (`KIND = "mixpanel.cohort_members"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CohortMembersCursor {
    /// The cohorts of the walk in progress (listed at its start); empty when no walk is in
    /// progress.
    pub cohorts: Vec<String>,
    /// Index in `cohorts` of the cohort being read.
    pub index: usize,
    /// The Engage walk of that cohort; `None`: its first page.
    pub engage: Option<EngagePosition>,
    /// Completed walks so far.
    pub walks: u64,
}

impl SyncCursor for CohortMembersCursor {
    const KIND: &'static str = "mixpanel.cohort_members";
    const VERSION: u32 = 1;
}

/// Cursor of a one-request list (`cohorts`, `funnels`): how many walks completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ListCursor {
    /// Completed walks so far.
    pub walks: u64,
}

/// Cursor of the `cohorts` stream (`KIND = "mixpanel.cohorts"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CohortsCursor(pub ListCursor);

impl SyncCursor for CohortsCursor {
    const KIND: &'static str = "mixpanel.cohorts";
    const VERSION: u32 = 1;
}

/// Cursor of the `funnels` stream (`KIND = "mixpanel.funnels"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FunnelsCursor(pub ListCursor);

impl SyncCursor for FunnelsCursor {
    const KIND: &'static str = "mixpanel.funnels";
    const VERSION: u32 = 1;
}

/// Cursor of the `funnel_results` stream (`KIND = "mixpanel.funnel_results"`): every funnel
/// is walked over the same days, one request per funnel and window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FunnelResultsCursor {
    /// A walk over `funnels` (listed at its start) from `walk_from`: funnel `index`, window
    /// starting at `from`.
    Walk {
        /// The funnels of this walk.
        funnels: Vec<String>,
        /// The funnel being read.
        index: usize,
        /// The first day of this walk (every funnel starts there).
        walk_from: NaiveDate,
        /// The next window's first day.
        from: NaiveDate,
    },
    /// Every funnel was read through `through`.
    CaughtUp {
        /// The last day read.
        through: NaiveDate,
    },
}

impl SyncCursor for FunnelResultsCursor {
    const KIND: &'static str = "mixpanel.funnel_results";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use apex_connect_core::ErrorKind;

    #[test]
    fn tokens_roundtrip_and_refuse_foreign_kinds() {
        let c = EventsCursor(DayPosition::Window {
            from: "2024-01-01".parse().unwrap(),
            to: Some("2024-01-30".parse().unwrap()),
            page: 3,
        });
        let t = c.to_token();
        assert!(t.as_str().starts_with("mixpanel.events.v1."));
        assert_eq!(EventsCursor::from_token(&t).unwrap(), c);
        assert_eq!(
            ProfilesCursor::from_token(&t).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let f = FunnelResultsCursor::CaughtUp {
            through: "2024-02-01".parse().unwrap(),
        };
        assert_eq!(FunnelResultsCursor::from_token(&f.to_token()).unwrap(), f);
    }
}
