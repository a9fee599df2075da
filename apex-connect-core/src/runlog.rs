//! The log lines of sync runs: a [`tracing_subscriber::Layer`] that keeps the events logged
//! inside a run, so the store can show them with the run (feature `run-logs`, default).
//!
//! [`SyncEngine::run`](crate::SyncEngine::run) does its work inside a span named
//! [`SPAN_NAME`] (`sync_run`) with the fields `run_id`, `connection`, `stream` and `kind`.
//! A [`RunLogLayer`] in the process's subscriber buffers, per such span, the events logged
//! inside it (the engine's, the connector's, the sink's: everything in the span's scope on
//! the run's task), formatted as one line each: the message, then the other fields as
//! `key=value`. At the end of the run the engine takes the run's lines from the layer it finds
//! in the run span's subscriber and stores them with
//! [`RunStore::append_run_logs`](crate::store::RunStore::append_run_logs), just before it
//! records the run's outcome. Without a layer nothing is captured, and nothing else changes.
//!
//! Bounded: a run keeps its first [`DEFAULT_MAX_LINES`] lines of [`DEFAULT_MAX_MESSAGE_BYTES`]
//! bytes at most (longer ones are cut, ending with `…`); the lines after them are counted and
//! replaced by one last line `"N more lines dropped"`, at the level of the most severe of them.
//! Only events at the layer's minimum level or more severe are kept (default `INFO`).
//!
//! ```no_run
//! use apex_connect_core::RunLogLayer;
//! use tracing_subscriber::prelude::*;
//!
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::EnvFilter::new("warn")))
//!     .with(RunLogLayer::new().filtered())
//!     .init();
//! ```
//!
//! Add it with [`RunLogLayer::filtered`], beside layers that have their own (per-layer)
//! filters: a global filter (`fmt().with_env_filter(..)`, or a filter layer) that disables
//! `INFO` spans disables the run span, and then nothing is captured.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{self, Attributes};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::store::{LogLevel, RunLogLine};
use crate::webhook::unix_ms;

/// The name of the engine's span around a sync run; its `run_id` field is the run's id.
pub const SPAN_NAME: &str = "sync_run";

/// The most lines kept per run by default (see [`RunLogLayer::with_max_lines`]).
pub const DEFAULT_MAX_LINES: usize = 2_000;

/// The longest line kept by default, in bytes (see [`RunLogLayer::with_max_message_bytes`]).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 500;

/// The target of the line that counts the dropped lines.
const TARGET: &str = "apex_connect_core::runlog";

/// Captures the events logged inside sync runs (see the [module docs](self)). Clones share
/// the buffers: a clone kept by the host reads what the installed layer captured.
#[derive(Clone)]
pub struct RunLogLayer {
    min_level: Level,
    max_lines: usize,
    max_message_bytes: usize,
    runs: Arc<Mutex<HashMap<span::Id, Buffer>>>,
}

/// The lines of one run span so far.
struct Buffer {
    run: i64,
    lines: Vec<RunLogLine>,
    dropped: u64,
    dropped_level: LogLevel,
}

/// Marks a run span in the registry's extensions (no map lookup for the others).
struct RunSpan;

impl Default for RunLogLayer {
    fn default() -> Self {
        RunLogLayer {
            min_level: Level::INFO,
            max_lines: DEFAULT_MAX_LINES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            runs: Arc::default(),
        }
    }
}

impl fmt::Debug for RunLogLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RunLogLayer");
        d.field("min_level", &self.min_level)
            .field("max_lines", &self.max_lines)
            .field("max_message_bytes", &self.max_message_bytes);
        if let Ok(runs) = self.runs.lock() {
            d.field("runs", &runs.len());
        }
        d.finish()
    }
}

impl RunLogLayer {
    /// A layer keeping `INFO` and more severe, up to [`DEFAULT_MAX_LINES`] lines of
    /// [`DEFAULT_MAX_MESSAGE_BYTES`] per run.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps only the events at `level` or more severe (`Level::WARN`: warnings and errors).
    pub fn with_min_level(mut self, level: Level) -> Self {
        self.min_level = level;
        self
    }

    /// Keeps at most `lines` lines per run (then counts the others).
    pub fn with_max_lines(mut self, lines: usize) -> Self {
        self.max_lines = lines;
        self
    }

    /// Cuts lines longer than `bytes` (at a character boundary, ending with `…`).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The layer with its own filter, to add to a subscriber beside other layers: it is
    /// called only for the run spans and for events at its minimum level or more severe, so
    /// the other events cost nothing, whatever the other layers' filters are.
    pub fn filtered<S>(self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let min = self.min_level;
        let filter = filter_fn(move |m| {
            if m.is_span() {
                m.name() == SPAN_NAME
            } else {
                *m.level() <= min
            }
        })
        // The run span is an INFO span.
        .with_max_level_hint(LevelFilter::from_level(std::cmp::max(min, Level::INFO)));
        self.with_filter(filter)
    }

    /// Takes the lines captured so far inside the run span `span` (its id in the subscriber
    /// this layer is part of), ending with the count of dropped lines if any; empty for an
    /// unknown span. The engine calls it at the end of each run.
    pub fn take(&self, span: &span::Id) -> Vec<RunLogLine> {
        let Some(buffer) = lock(&self.runs).get_mut(span).map(|b| Buffer {
            run: b.run,
            lines: std::mem::take(&mut b.lines),
            dropped: std::mem::take(&mut b.dropped),
            dropped_level: std::mem::replace(&mut b.dropped_level, LogLevel::Trace),
        }) else {
            return Vec::new();
        };
        let mut lines = buffer.lines;
        if buffer.dropped > 0 {
            lines.push(RunLogLine::new(
                unix_ms(SystemTime::now()),
                buffer.dropped_level,
                TARGET,
                format!("{} more lines dropped", buffer.dropped),
            ));
        }
        lines
    }

    /// The ids of the runs with a span open now (in no particular order).
    pub fn open_runs(&self) -> Vec<i64> {
        lock(&self.runs).values().map(|b| b.run).collect()
    }

    fn format(&self, event: &Event<'_>) -> String {
        let mut v = Formatter::default();
        event.record(&mut v);
        let mut line = v.message;
        if line.is_empty() {
            line = v.fields.trim_start().to_owned();
        } else {
            line.push_str(&v.fields);
        }
        truncate(&mut line, self.max_message_bytes);
        line
    }
}

/// Takes the lines of the run span `span` from the [`RunLogLayer`] of its subscriber: `None`
/// when the span is disabled or its subscriber has no such layer.
pub(crate) fn take(span: &tracing::Span) -> Option<Vec<RunLogLine>> {
    span.with_subscriber(|(id, dispatch)| {
        dispatch
            .downcast_ref::<RunLogLayer>()
            .map(|layer| layer.take(id))
    })
    .flatten()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it leaves at worst a half-updated buffer: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cuts `s` to at most `max` bytes at a character boundary, ending with `…`.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    if max >= ELLIPSIS.len() {
        s.push_str(ELLIPSIS);
    }
}

impl<S> Layer<S> for RunLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != SPAN_NAME {
            return;
        }
        let mut run = RunIdField(None);
        attrs.record(&mut run);
        let (Some(run), Some(span)) = (run.0, ctx.span(id)) else {
            return;
        };
        span.extensions_mut().insert(RunSpan);
        lock(&self.runs).insert(
            id.clone(),
            Buffer {
                run,
                lines: Vec::new(),
                dropped: 0,
                dropped_level: LogLevel::Trace,
            },
        );
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.min_level {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        let Some(run_span) = scope
            .into_iter()
            .find(|s| s.extensions().get::<RunSpan>().is_some())
        else {
            return;
        };
        let level = LogLevel::from(*meta.level());
        let mut runs = lock(&self.runs);
        let Some(buffer) = runs.get_mut(&run_span.id()) else {
            return;
        };
        if buffer.lines.len() >= self.max_lines {
            buffer.dropped += 1;
            buffer.dropped_level = buffer.dropped_level.max(level);
            return;
        }
        drop(runs);
        // Formatted outside the lock; the buffer is looked up again (the span is alive: the
        // event is inside it, so nobody removed it meanwhile).
        let line = RunLogLine::new(
            unix_ms(SystemTime::now()),
            level,
            meta.target(),
            self.format(event),
        );
        if let Some(buffer) = lock(&self.runs).get_mut(&run_span.id()) {
            if buffer.lines.len() < self.max_lines {
                buffer.lines.push(line);
            } else {
                buffer.dropped += 1;
                buffer.dropped_level = buffer.dropped_level.max(level);
            }
        }
    }

    fn on_close(&self, id: span::Id, _ctx: Context<'_, S>) {
        lock(&self.runs).remove(&id);
    }
}

/// Reads the `run_id` field of a run span.
struct RunIdField(Option<i64>);

impl Visit for RunIdField {
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "run_id" {
            self.0 = Some(value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "run_id" {
            self.0 = i64::try_from(value).ok();
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn fmt::Debug) {}
}

/// Formats an event as `tracing_subscriber::fmt` does: the message, then ` key=value`.
#[derive(Default)]
struct Formatter {
    message: String,
    fields: String,
}

impl Visit for Formatter {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if name == "message" {
            let _ = write!(self.message, "{value:?}");
        } else if !name.starts_with("log.") {
            let _ = write!(self.fields, " {name}={value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncation_keeps_char_boundaries() {
        let mut s = "é".repeat(10); // 20 bytes
        truncate(&mut s, 8);
        assert_eq!(s, "éé…"); // 4 + 3 bytes: the next é would make 9
        let mut short = "abc".to_owned();
        truncate(&mut short, 3);
        assert_eq!(short, "abc");
    }
}
