//! Counters of the webhook ingress and the inbox workers, rendered as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use apex_connect_core::store::InboxCounts;
use serde::Serialize;

/// How a webhook request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Verified and stored (2xx).
    Accepted,
    /// Verified, but its event id was already stored (200, dropped).
    Duplicate,
    /// Missing or wrong signature (401).
    BadSignature,
    /// Signed timestamp outside the tolerance (401).
    Expired,
    /// Body over the limit (413).
    TooLarge,
    /// No such connection for this platform (404).
    UnknownConnection,
    /// Headers or body not in the platform's format (400).
    Malformed,
    /// A platform handshake answered (Front's challenge).
    Handshake,
    /// The inbox could not store it (503; the platform retries).
    StoreError,
}

impl Outcome {
    /// Every outcome, in display order.
    pub const ALL: [Outcome; 9] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::BadSignature,
        Outcome::Expired,
        Outcome::TooLarge,
        Outcome::UnknownConnection,
        Outcome::Malformed,
        Outcome::Handshake,
        Outcome::StoreError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::BadSignature => "bad_signature",
            Outcome::Expired => "expired",
            Outcome::TooLarge => "too_large",
            Outcome::UnknownConnection => "unknown_connection",
            Outcome::Malformed => "malformed",
            Outcome::Handshake => "handshake",
            Outcome::StoreError => "store_error",
        }
    }

    fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// What a worker did with an inbox event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkOutcome {
    /// Processed and completed.
    Processed,
    /// Failed; will be retried.
    Retried,
    /// Failed for the last time; dead-lettered.
    DeadLettered,
    /// Finished after its lease expired (another worker may have it; harmless: sinks upsert).
    LeaseLost,
    /// Released back to the queue at shutdown.
    Released,
}

impl WorkOutcome {
    /// Every outcome.
    pub const ALL: [WorkOutcome; 5] = [
        WorkOutcome::Processed,
        WorkOutcome::Retried,
        WorkOutcome::DeadLettered,
        WorkOutcome::LeaseLost,
        WorkOutcome::Released,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkOutcome::Processed => "processed",
            WorkOutcome::Retried => "retried",
            WorkOutcome::DeadLettered => "dead_lettered",
            WorkOutcome::LeaseLost => "lease_lost",
            WorkOutcome::Released => "released",
        }
    }

    fn index(self) -> usize {
        WorkOutcome::ALL
            .iter()
            .position(|o| *o == self)
            .unwrap_or(0)
    }
}

/// The counters. Shared as `Arc<Metrics>`; every method is lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    webhooks: [AtomicU64; 9],
    work: [AtomicU64; 5],
    records: AtomicU64,
    rejected: AtomicU64,
    sync_runs_ok: AtomicU64,
    sync_runs_failed: AtomicU64,
}

/// A copy of the counters, as in `GET /admin/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Webhook requests per outcome.
    pub webhooks: std::collections::BTreeMap<&'static str, u64>,
    /// Inbox events per worker outcome.
    pub inbox_work: std::collections::BTreeMap<&'static str, u64>,
    /// Records handed to the sink by workers.
    pub records_written: u64,
    /// Records of webhooks quarantined by workers (they could not be mapped).
    pub records_rejected: u64,
    /// Scheduled runs that succeeded.
    pub sync_runs_succeeded: u64,
    /// Scheduled runs that failed.
    pub sync_runs_failed: u64,
}

impl Metrics {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a webhook request.
    pub fn webhook(&self, outcome: Outcome) {
        self.webhooks[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` inbox events with a worker outcome.
    pub fn work(&self, outcome: WorkOutcome, n: u64) {
        self.work[outcome.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts records written by workers.
    pub fn records(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts records quarantined by workers.
    pub fn rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a scheduled run.
    pub fn sync_run(&self, ok: bool) {
        if ok {
            self.sync_runs_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.sync_runs_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The webhook counter of `outcome`.
    pub fn webhook_count(&self, outcome: Outcome) -> u64 {
        self.webhooks[outcome.index()].load(Ordering::Relaxed)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            webhooks: Outcome::ALL
                .iter()
                .map(|o| (o.as_str(), self.webhook_count(*o)))
                .collect(),
            inbox_work: WorkOutcome::ALL
                .iter()
                .map(|o| (o.as_str(), self.work[o.index()].load(Ordering::Relaxed)))
                .collect(),
            records_written: self.records.load(Ordering::Relaxed),
            records_rejected: self.rejected.load(Ordering::Relaxed),
            sync_runs_succeeded: self.sync_runs_ok.load(Ordering::Relaxed),
            sync_runs_failed: self.sync_runs_failed.load(Ordering::Relaxed),
        }
    }

    /// Prometheus text exposition of the counters and the inbox gauges.
    pub fn prometheus(&self, inbox: Option<InboxCounts>) -> String {
        let s = self.snapshot();
        let mut out = String::new();
        out.push_str("# HELP apex_connect_webhooks_total Webhook requests by outcome.\n");
        out.push_str("# TYPE apex_connect_webhooks_total counter\n");
        for (k, v) in &s.webhooks {
            let _ = writeln!(out, "apex_connect_webhooks_total{{outcome=\"{k}\"}} {v}");
        }
        out.push_str(
            "# HELP apex_connect_inbox_work_total Inbox events handled by workers, by outcome.\n",
        );
        out.push_str("# TYPE apex_connect_inbox_work_total counter\n");
        for (k, v) in &s.inbox_work {
            let _ = writeln!(out, "apex_connect_inbox_work_total{{outcome=\"{k}\"}} {v}");
        }
        out.push_str("# TYPE apex_connect_records_written_total counter\n");
        let _ = writeln!(
            out,
            "apex_connect_records_written_total {}",
            s.records_written
        );
        out.push_str("# TYPE apex_connect_records_rejected_total counter\n");
        let _ = writeln!(
            out,
            "apex_connect_records_rejected_total {}",
            s.records_rejected
        );
        out.push_str("# TYPE apex_connect_sync_runs_total counter\n");
        let _ = writeln!(
            out,
            "apex_connect_sync_runs_total{{status=\"succeeded\"}} {}",
            s.sync_runs_succeeded
        );
        let _ = writeln!(
            out,
            "apex_connect_sync_runs_total{{status=\"failed\"}} {}",
            s.sync_runs_failed
        );
        if let Some(c) = inbox {
            out.push_str("# HELP apex_connect_inbox_events Inbox events by state.\n");
            out.push_str("# TYPE apex_connect_inbox_events gauge\n");
            for (k, v) in [
                ("pending", c.pending),
                ("in_flight", c.in_flight),
                ("done", c.done),
                ("dead", c.dead),
            ] {
                let _ = writeln!(out, "apex_connect_inbox_events{{state=\"{k}\"}} {v}");
            }
        }
        out
    }
}
