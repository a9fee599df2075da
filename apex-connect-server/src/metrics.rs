//! The serve process's metrics, through `prometheus-client`: counters maintained as events
//! happen (webhook outcomes, worker outcomes, records, runs), histograms (webhook
//! time-to-ack, worker batch processing time, sync page latency, rate-gate waits) and the
//! inbox gauges, rendered as OpenMetrics text on `GET /metrics`.
//!
//! The inbox gauges are the one thing read from the store: with several `serve` processes on
//! one PostgreSQL database the inbox is shared, so no process can count it alone. They are
//! refreshed at most every [`GAUGE_REFRESH`] (a scrape in between reads the last values), by
//! index range counts of the backlog (see the stores' `inbox_counts`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apex_connect_core::http::{GateWaitObserver, observe_gate_waits};
use apex_connect_core::store::InboxCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

/// How long the inbox gauges read from the store are reused by later scrapes.
pub const GAUGE_REFRESH: Duration = Duration::from_secs(5);

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

/// The label of the outcome counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The label of the sync run counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The label of the inbox gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The serve process's metrics. Shared as `Arc<Metrics>`; counting is lock-free (each labelled
/// counter is resolved once, at construction), histograms take a short lock.
pub struct Metrics {
    registry: Registry,
    webhooks: [Counter; 9],
    work: [Counter; 5],
    records: Counter,
    rejected: Counter,
    sync_ok: Counter,
    sync_failed: Counter,
    webhook_ack: Histogram,
    worker_batch: Histogram,
    sync_page: Histogram,
    gate_wait: Histogram,
    inbox: [Gauge; 4],
    inbox_read: Mutex<Option<Instant>>,
    observing: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("snapshot", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
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

/// The inbox states of the gauges, in [`InboxCounts`] order.
const INBOX_STATES: [&str; 4] = ["pending", "in_flight", "done", "dead"];

impl Metrics {
    /// Zeroed metrics, registered in their own registry. Rate-gate waits are observed once the
    /// metrics are shared ([`Metrics::shared`], or any `Arc` given to the server state).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("apex_connect");
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register("webhooks", "Webhook requests by outcome", webhooks.clone());
        let work = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "inbox_work",
            "Inbox events handled by workers, by outcome",
            work.clone(),
        );
        let records = Counter::default();
        registry.register(
            "records_written",
            "Records of webhooks handed to the sink by workers",
            records.clone(),
        );
        let rejected = Counter::default();
        registry.register(
            "records_rejected",
            "Records of webhooks quarantined by workers (they could not be mapped)",
            rejected.clone(),
        );
        let runs = Family::<StatusLabel, Counter>::default();
        registry.register("sync_runs", "Scheduled sync runs by result", runs.clone());
        let webhook_ack = Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        registry.register_with_unit(
            "webhook_ack",
            "Time from a webhook request's arrival to its answer (body read, verified, stored)",
            Unit::Seconds,
            webhook_ack.clone(),
        );
        let worker_batch = Histogram::new(exponential_buckets(0.000_5, 2.0, 16));
        registry.register_with_unit(
            "worker_batch",
            "Time a worker took to process one claimed batch of inbox events, claim to completion",
            Unit::Seconds,
            worker_batch.clone(),
        );
        let sync_page = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register_with_unit(
            "sync_page",
            "Time between committed pages of scheduled sync runs (read, map, write, commit)",
            Unit::Seconds,
            sync_page.clone(),
        );
        let gate_wait = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register_with_unit(
            "rate_gate_wait",
            "Time requests of every connector waited at their platform's rate gate (0: admitted at once)",
            Unit::Seconds,
            gate_wait.clone(),
        );
        let inbox = Family::<StateLabel, Gauge>::default();
        registry.register(
            "inbox_events",
            "Inbox events by state (pending: due or waiting for a retry; in_flight: leased; dead: dead letters)",
            inbox.clone(),
        );
        let outcome = |f: &Family<OutcomeLabel, Counter>, o: &'static str| {
            f.get_or_create_owned(&OutcomeLabel { outcome: o })
        };
        Metrics {
            webhooks: Outcome::ALL.map(|o| outcome(&webhooks, o.as_str())),
            work: WorkOutcome::ALL.map(|o| outcome(&work, o.as_str())),
            records,
            rejected,
            // Owned handles: a read guard kept to the end of this expression would deadlock
            // the next `get_or_create` of the same family.
            sync_ok: runs.get_or_create_owned(&StatusLabel {
                status: "succeeded",
            }),
            sync_failed: runs.get_or_create_owned(&StatusLabel { status: "failed" }),
            webhook_ack,
            worker_batch,
            sync_page,
            gate_wait,
            inbox: INBOX_STATES.map(|s| inbox.get_or_create_owned(&StateLabel { state: s })),
            inbox_read: Mutex::new(None),
            observing: AtomicBool::new(false),
            registry,
        }
    }

    /// New metrics, shared, observing the rate gates of every HTTP client in the process.
    pub fn shared() -> Arc<Self> {
        let m = Arc::new(Self::new());
        Self::observe_rate_gates(&m);
        m
    }

    /// Makes `metrics` observe the rate gates of every HTTP client in the process (once; it is
    /// held weakly, so dropping the metrics ends it).
    pub fn observe_rate_gates(metrics: &Arc<Self>) {
        if !metrics.observing.swap(true, Ordering::AcqRel) {
            let o: Arc<dyn GateWaitObserver> = metrics.clone();
            observe_gate_waits(&o);
        }
    }

    /// Counts a webhook request.
    pub fn webhook(&self, outcome: Outcome) {
        self.webhooks[outcome.index()].inc();
    }

    /// Records a webhook answer's time from the request's arrival.
    pub fn webhook_ack(&self, elapsed: Duration) {
        self.webhook_ack.observe(elapsed.as_secs_f64());
    }

    /// Counts `n` inbox events with a worker outcome.
    pub fn work(&self, outcome: WorkOutcome, n: u64) {
        self.work[outcome.index()].inc_by(n);
    }

    /// Records the time a worker took for one batch, claim to completion.
    pub fn worker_batch(&self, elapsed: Duration) {
        self.worker_batch.observe(elapsed.as_secs_f64());
    }

    /// Records the time one page of a scheduled sync took.
    pub fn sync_page(&self, elapsed: Duration) {
        self.sync_page.observe(elapsed.as_secs_f64());
    }

    /// Counts records written by workers.
    pub fn records(&self, n: u64) {
        self.records.inc_by(n);
    }

    /// Counts records quarantined by workers.
    pub fn rejected(&self, n: u64) {
        self.rejected.inc_by(n);
    }

    /// Counts a scheduled run.
    pub fn sync_run(&self, ok: bool) {
        if ok {
            self.sync_ok.inc();
        } else {
            self.sync_failed.inc();
        }
    }

    /// The webhook counter of `outcome`.
    pub fn webhook_count(&self, outcome: Outcome) -> u64 {
        self.webhooks[outcome.index()].get()
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
                .map(|o| (o.as_str(), self.work[o.index()].get()))
                .collect(),
            records_written: self.records.get(),
            records_rejected: self.rejected.get(),
            sync_runs_succeeded: self.sync_ok.get(),
            sync_runs_failed: self.sync_failed.get(),
        }
    }

    /// Whether the inbox gauges are due for a refresh from the store (none in the last
    /// [`GAUGE_REFRESH`]); marks them refreshed now when they are.
    pub fn inbox_gauges_due(&self) -> bool {
        let mut last = self.inbox_read.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= GAUGE_REFRESH);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Sets the inbox gauges.
    pub fn set_inbox(&self, c: InboxCounts) {
        for (g, v) in self
            .inbox
            .iter()
            .zip([c.pending, c.in_flight, c.done, c.dead])
        {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition of every metric (`application/openmetrics-text`).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would leave what was written.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl GateWaitObserver for Metrics {
    fn gate_wait(&self, waited: Duration) {
        self.gate_wait.observe(waited.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openmetrics_with_histograms_and_gauges() {
        let m = Metrics::shared();
        m.webhook(Outcome::Accepted);
        m.webhook(Outcome::Accepted);
        m.work(WorkOutcome::Processed, 3);
        m.webhook_ack(Duration::from_micros(250));
        m.worker_batch(Duration::from_millis(2));
        m.sync_page(Duration::from_millis(40));
        m.sync_run(false);
        let mut c = InboxCounts::default();
        (c.pending, c.in_flight, c.done, c.dead) = (4, 1, 9, 2);
        m.set_inbox(c);
        let text = m.prometheus();
        for line in [
            "apex_connect_webhooks_total{outcome=\"accepted\"} 2",
            "apex_connect_webhooks_total{outcome=\"bad_signature\"} 0",
            "apex_connect_inbox_work_total{outcome=\"processed\"} 3",
            "apex_connect_sync_runs_total{status=\"failed\"} 1",
            "apex_connect_inbox_events{state=\"dead\"} 2",
            "apex_connect_inbox_events{state=\"pending\"} 4",
            "# TYPE apex_connect_webhook_ack_seconds histogram",
            "apex_connect_webhook_ack_seconds_count 1",
            "apex_connect_worker_batch_seconds_count 1",
            "apex_connect_sync_page_seconds_count 1",
            "# TYPE apex_connect_rate_gate_wait_seconds histogram",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert_eq!(m.snapshot().webhooks["accepted"], 2);
        assert!(m.inbox_gauges_due());
        assert!(
            !m.inbox_gauges_due(),
            "refreshed at most every GAUGE_REFRESH"
        );
    }

    fn gate_wait_count(m: &Metrics) -> u64 {
        m.prometheus()
            .lines()
            .find_map(|l| l.strip_prefix("apex_connect_rate_gate_wait_seconds_count "))
            .and_then(|v| v.parse().ok())
            .expect("the rate gate histogram is rendered")
    }

    #[test]
    fn rate_gate_waits_reach_shared_metrics_once() {
        let m = Metrics::shared();
        Metrics::observe_rate_gates(&m); // a second registration is a no-op
        let before = gate_wait_count(&m);
        m.gate_wait(Duration::from_millis(20));
        let after = gate_wait_count(&m);
        // Other tests' HTTP clients in this process report to every shared `Metrics` too.
        assert!(after > before, "{before} -> {after}");
        assert!(
            m.prometheus()
                .contains("apex_connect_rate_gate_wait_seconds_bucket{le=\"0.032\"}")
        );
        let unshared = Metrics::new();
        assert_eq!(gate_wait_count(&unshared), 0, "not observing until shared");
    }
}
