//! The dashboard's pages (maud: every value is escaped by construction) and the data they
//! show, each read with a bounded number of store calls.

use std::collections::BTreeMap;

use apex_connect_core::store::{
    ConnectionStatus, DailyRunStats, DeadLetter, InboxCounts, LogLevel, RunLogLine, RunStatus,
    ScheduleRow, StoredReject, SyncRun,
};
use apex_connect_core::{ConnectionId, Result, StreamId};
use chrono::{TimeZone, Utc};
use maud::{DOCTYPE, Markup, html};

use super::session::Session;
use crate::state::ServerState;

/// Log lines shown on a run's page.
pub(crate) const MAX_LOG_LINES: usize = 2000;
/// Dead letters listed on the inbox page.
pub(crate) const MAX_DEAD_LETTERS: usize = 200;
/// Quarantined records listed.
pub(crate) const MAX_REJECTS: usize = 200;
/// Runs listed on a connection's page.
const RUNS_SHOWN: usize = 50;
/// Days in a connection's volume chart.
const CHART_DAYS: i64 = 14;
const DAY_MS: i64 = 86_400_000;

pub(crate) const CSS: &str = include_str!("../../assets/app.css");

fn time(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "—".to_string())
}

fn ago(ms: i64, now: i64) -> String {
    let d = now.saturating_sub(ms);
    let (sign, d) = if d < 0 { ("in ", -d) } else { ("", d) };
    let s = d / 1000;
    let text = if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d", s / 86_400)
    };
    if sign.is_empty() {
        format!("{text} ago")
    } else {
        format!("{sign}{text}")
    }
}

fn duration(run: &SyncRun, now: i64) -> String {
    let end = run.finished_at.unwrap_or(now);
    let ms = end.saturating_sub(run.started_at).max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false}"#;
                title { (title) " · apex-connect" }
                link rel="stylesheet" href="/ui/assets/app.css";
                script src="/ui/assets/htmx-2.0.11.min.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui" { "apex-connect" }
                    @if let Some(s) = session {
                        nav {
                            a href="/ui" { "Overview" }
                            a href="/ui/inbox" { "Inbox" }
                            a href="/ui/rejects" { "Quarantine" }
                            a href="/ui/entities" { "Entities" }
                            form.inline method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button.link #logout type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf(s: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// The sign-in page.
pub(crate) fn login(has_token: bool, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            section.card.narrow {
                h1 { "Sign in" }
                @if let Some(e) = error { p.error { (e) } }
                form method="post" action="/ui/login" {
                    @if has_token {
                        label for="token" { "Admin token" }
                        input #token type="password" name="token" autocomplete="current-password" required;
                    } @else {
                        p.muted { "No admin token is configured: the dashboard answers this machine only." }
                    }
                    button #signin type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The state of one connection on the overview.
pub(crate) struct Row {
    pub(crate) id: ConnectionId,
    pub(crate) platform: String,
    pub(crate) health: &'static str,
    pub(crate) detail: Option<String>,
    pub(crate) last_run: Option<SyncRun>,
    pub(crate) next_due: Option<i64>,
    pub(crate) records_today: u64,
    pub(crate) runs_today: u64,
    pub(crate) failed_today: u64,
    pub(crate) rejects: u64,
    /// Inbox events of this connection waiting or in flight, and dead-lettered.
    pub(crate) inbox: (u64, u64),
}

/// The overview's data.
pub(crate) struct Overview {
    pub(crate) rows: Vec<Row>,
    pub(crate) inbox: InboxCounts,
    pub(crate) webhooks_accepted: u64,
    pub(crate) now: i64,
}

/// `healthy`, `syncing`, `failing`, `needs re-authorization` or `disabled`.
fn health(
    status: Option<ConnectionStatus>,
    schedules: &[&ScheduleRow],
    last: Option<&SyncRun>,
    now: i64,
) -> &'static str {
    match status {
        Some(ConnectionStatus::Disabled) => return "disabled",
        Some(ConnectionStatus::NeedsReauth) => return "needs re-authorization",
        _ => {}
    }
    let running = schedules
        .iter()
        .any(|s| s.lease_until.is_some_and(|u| u > now) && s.lease_owner.is_some())
        || last.is_some_and(|r| r.status == RunStatus::Running);
    if running {
        return "syncing";
    }
    let failing = status == Some(ConnectionStatus::Failing)
        || schedules.iter().any(|s| s.failures > 0)
        || last.is_some_and(|r| r.status == RunStatus::Failed);
    if failing { "failing" } else { "healthy" }
}

impl Overview {
    /// Reads it: the connections, the schedules, each connection's inbox backlog, today's run
    /// statistics,
    /// each connection's latest run and quarantine count, and the inbox counts.
    pub(crate) async fn load(state: &ServerState, now: i64) -> Result<Overview> {
        let store = state.store();
        let stored: BTreeMap<ConnectionId, _> = store
            .list_connections()
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let schedules = store.list_schedules().await?;
        // The backlog's rows only (pending, in flight, dead), one query for all connections.
        let backlog: BTreeMap<ConnectionId, (u64, u64)> = store
            .inbox_backlog()
            .await?
            .into_iter()
            .map(|b| (b.connection, (b.pending + b.in_flight, b.dead)))
            .collect();
        let today = now - now.rem_euclid(DAY_MS);
        let mut rows = Vec::new();
        for h in state.connections() {
            let mine: Vec<&ScheduleRow> =
                schedules.iter().filter(|s| s.connection == h.id).collect();
            let last_run = store.list_runs(Some(&h.id), 1).await?.into_iter().next();
            let c = stored.get(&h.id);
            // One range of the (connection, started_at) index per connection.
            let today = store.run_stats(Some(&h.id), today).await?;
            rows.push(Row {
                id: h.id.clone(),
                platform: h.platform.clone(),
                health: health(c.map(|c| c.status), &mine, last_run.as_ref(), now),
                detail: c.and_then(|c| c.status_detail.clone()),
                next_due: mine.iter().map(|s| s.next_due_at).min(),
                records_today: today.iter().map(|s| s.records_read).sum(),
                runs_today: today.iter().map(|s| s.runs).sum(),
                failed_today: today.iter().map(|s| s.failed).sum(),
                rejects: store.count_rejects(Some(&h.id)).await?,
                inbox: backlog.get(&h.id).copied().unwrap_or_default(),
                last_run,
            });
        }
        Ok(Overview {
            rows,
            inbox: state.inbox_counts().await?,
            webhooks_accepted: state
                .metrics()
                .webhook_count(crate::metrics::Outcome::Accepted),
            now,
        })
    }
}

fn badge(health: &str) -> Markup {
    let class = match health {
        "healthy" => "ok",
        "syncing" => "busy",
        "failing" => "bad",
        "needs re-authorization" => "warn",
        _ => "off",
    };
    html! { span class=(format!("badge {class}")) { (health) } }
}

fn run_status(status: RunStatus) -> Markup {
    let class = match status {
        RunStatus::Succeeded => "ok",
        RunStatus::Running => "busy",
        RunStatus::Failed => "bad",
        _ => "off",
    };
    html! { span class=(format!("badge {class}")) { (status.as_str()) } }
}

/// The overview page.
pub(crate) fn overview(s: &Session, o: &Overview) -> Markup {
    layout(
        "Overview",
        Some(s),
        html! {
            h1 { "Connections" }
            (overview_table(s, o))
        },
    )
}

/// The overview's live part (refreshed every two seconds).
pub(crate) fn overview_table(_s: &Session, o: &Overview) -> Markup {
    let now = o.now;
    html! {
        div #overview hx-get="/ui/fragments/overview" hx-trigger="every 2s" hx-swap="outerHTML" {
            section.tiles {
                div.tile { b #inbox-pending { (o.inbox.pending) } span { "inbox pending" } }
                div.tile { b { (o.inbox.in_flight) } span { "in flight" } }
                div.tile { b #dead-letters { (o.inbox.dead) } a href="/ui/inbox" { "dead letters" } }
                div.tile { b { (o.webhooks_accepted) } span { "webhooks accepted (this process)" } }
            }
            table #connections {
                thead { tr {
                    th { "Connection" } th { "Platform" } th { "Status" } th { "Last run" }
                    th { "Next run" } th.num { "Records today" } th.num { "Error rate today" }
                    th.num { "Quarantined" } th.num { "Inbox" } th.num { "Dead letters" }
                } }
                tbody {
                    @for r in &o.rows {
                        tr data-connection=(r.id) {
                            td { a href=(format!("/ui/connections/{}", r.id)) { (r.id) } }
                            td { (r.platform) }
                            td.health { (badge(r.health)) @if let Some(d) = &r.detail { div.muted.small { (d) } } }
                            td { @match &r.last_run {
                                Some(run) => { a href=(format!("/ui/runs/{}", run.id.0)) { (run_status(run.status)) } " " span.muted { (ago(run.started_at, now)) } }
                                None => { span.muted { "never" } }
                            } }
                            td { @match r.next_due { Some(t) => { (ago(t, now)) }, None => { span.muted { "not scheduled" } } } }
                            td.num { (r.records_today) }
                            td.num { @if r.runs_today == 0 { span.muted { "—" } } @else {
                                (format!("{:.0}%", r.failed_today as f64 * 100.0 / r.runs_today as f64))
                                span.muted.small { " of " (r.runs_today) " runs" }
                            } }
                            td.num { @if r.rejects > 0 { a href=(format!("/ui/rejects?connection={}", r.id)) { (r.rejects) } } @else { "0" } }
                            td.num.inbox { (r.inbox.0) }
                            td.num.dead { @if r.inbox.1 > 0 { a href="/ui/inbox" { (r.inbox.1) } } @else { "0" } }
                        }
                    }
                }
            }
        }
    }
}

/// A connection's page data.
pub(crate) struct ConnectionView {
    pub(crate) id: ConnectionId,
    pub(crate) platform: String,
    pub(crate) status: ConnectionStatus,
    pub(crate) detail: Option<String>,
    pub(crate) streams: Vec<(StreamId, Option<String>, Option<ScheduleRow>)>,
    pub(crate) runs: Vec<SyncRun>,
    pub(crate) days: Vec<DailyRunStats>,
    pub(crate) has_tokens: bool,
    pub(crate) now: i64,
}

impl ConnectionView {
    /// Reads it: the stored row, each stream's cursor and schedule, the latest runs, the
    /// daily volumes of the last two weeks, whether tokens are held.
    pub(crate) async fn load(state: &ServerState, id: &ConnectionId, now: i64) -> Result<Self> {
        let store = state.store();
        let handle = state.connection(id);
        let stored = store.get_connection(id).await?;
        let schedules = store.list_schedules().await?;
        let mut streams = Vec::new();
        for s in handle.map(|h| h.streams.clone()).unwrap_or_default() {
            let cursor = store
                .load_cursor(id, &s)
                .await?
                .map(|v| v.value.as_str().to_string());
            let schedule = schedules
                .iter()
                .find(|r| &r.connection == id && r.stream == s)
                .cloned();
            streams.push((s, cursor, schedule));
        }
        let today = now - now.rem_euclid(DAY_MS);
        Ok(ConnectionView {
            id: id.clone(),
            platform: handle.map(|h| h.platform.clone()).unwrap_or_default(),
            status: stored
                .as_ref()
                .map_or(ConnectionStatus::Active, |c| c.status),
            detail: stored.and_then(|c| c.status_detail),
            streams,
            runs: store.list_runs(Some(id), RUNS_SHOWN).await?,
            days: store
                .run_stats(Some(id), today - (CHART_DAYS - 1) * DAY_MS)
                .await?,
            has_tokens: apex_connect_core::TokenStore::load(store.as_ref(), id)
                .await?
                .is_some(),
            now,
        })
    }
}

/// A connection's page.
pub(crate) fn connection(s: &Session, c: &ConnectionView, oauth: bool) -> Markup {
    connection_page(s, c, oauth, None)
}

/// A connection's page with an error about the form just sent.
pub(crate) fn connection_with_error(
    s: &Session,
    c: &ConnectionView,
    oauth: bool,
    error: &str,
) -> Markup {
    connection_page(s, c, oauth, Some(error))
}

fn connection_page(s: &Session, c: &ConnectionView, oauth: bool, error: Option<&str>) -> Markup {
    let now = c.now;
    let base = format!("/ui/connections/{}", c.id);
    let schedules: Vec<&ScheduleRow> = c
        .streams
        .iter()
        .filter_map(|(_, _, r)| r.as_ref())
        .collect();
    let health = health(Some(c.status), &schedules, c.runs.first(), now);
    layout(
        c.id.as_str(),
        Some(s),
        html! {
            @if let Some(e) = error { p.error #form-error { (e) } }
            // Refreshed every two seconds from this page itself; a schedule being typed is
            // kept (hx-preserve).
            div #live hx-get=(base) hx-trigger="every 2s" hx-select="#live" hx-swap="outerHTML" {
            h1 { (c.id) " " span.muted { (c.platform) } " " span #health { (badge(health)) } }
            @if let Some(d) = &c.detail { p.muted #detail { (d) } }
            section.actions {
                form.inline method="post" action=(format!("{base}/sync")) { (csrf(s)) button #sync-now type="submit" { "Run sync now" } }
                form.inline method="post" action=(format!("{base}/retry-failed")) { (csrf(s)) button type="submit" { "Retry failed runs" } }
                @if c.status == ConnectionStatus::Disabled {
                    form.inline method="post" action=(format!("{base}/enable")) { (csrf(s)) button #enable type="submit" { "Enable" } }
                } @else {
                    form.inline method="post" action=(format!("{base}/disable")) { (csrf(s)) button #disable type="submit" { "Disable" } }
                }
                @if oauth {
                    form.inline method="post" action=(format!("{base}/connect")) { (csrf(s)) button #connect type="submit" { @if c.has_tokens { "Reconnect (OAuth)" } @else { "Connect (OAuth)" } } }
                }
                @if c.has_tokens {
                    form.inline method="post" action=(format!("{base}/disconnect")) { (csrf(s)) button.danger #disconnect type="submit" { "Disconnect" } }
                }
                span.muted #tokens { @if c.has_tokens { "tokens held (encrypted)" } @else { "no stored tokens" } }
            }
            h2 { "Streams" }
            table #streams {
                thead { tr { th { "Stream" } th { "Cursor" } th { "Schedule" } th { "Next run" } th { "Last" } th {} } }
                tbody {
                    @for (stream, cursor, schedule) in &c.streams {
                        tr data-stream=(stream) {
                            td { (stream) }
                            td.mono.small { @match cursor { Some(t) => { (truncate(t, 80)) }, None => { span.muted { "from the beginning" } } } }
                            td {
                                form.schedule method="post" action=(format!("{base}/schedule")) {
                                    (csrf(s))
                                    input type="hidden" name="stream" value=(stream);
                                    input type="text" name="schedule" size="28" placeholder="every 15m | cron */5 * * * *"
                                        id=(format!("schedule-{stream}")) hx-preserve="true"
                                        value=(schedule.as_ref().map(|r| readable_spec(&r.spec)).unwrap_or_default());
                                    button type="submit" { "Save" }
                                }
                            }
                            td.next-due { @match schedule { Some(r) => { (ago(r.next_due_at, now)) br; span.muted.small { (time(r.next_due_at)) " UTC" } }, None => { span.muted { "—" } } } }
                            td { @if let Some(r) = schedule { @if let Some(st) = r.last_status { (run_status(st)) } @if r.failures > 0 { span.muted.small { " " (r.failures) " failures in a row" } } } }
                            td { form.inline method="post" action=(format!("{base}/sync")) { (csrf(s)) input type="hidden" name="stream" value=(stream); button type="submit" { "Run" } } }
                        }
                    }
                }
            }
            h2 { "Records per day" }
            (chart(&c.days, now))
            h2 { "Runs" }
            (runs_table(&c.id, &c.runs, now))
            }
        },
    )
}

/// `every 900000ms jitter 0ms` as `every 15m`.
fn readable_spec(spec: &str) -> String {
    let Some(rest) = spec.strip_prefix("every ") else {
        return spec.to_string();
    };
    let (every, jitter) = rest.split_once(" jitter ").unwrap_or((rest, "0ms"));
    let fmt = |s: &str| {
        humantime::parse_duration(s.trim())
            .map(|d| humantime::format_duration(d).to_string())
            .unwrap_or_else(|_| s.to_string())
    };
    if humantime::parse_duration(jitter.trim()).is_ok_and(|d| d.is_zero()) {
        format!("every {}", fmt(every))
    } else {
        format!("every {} jitter {}", fmt(every), fmt(jitter))
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// A connection's runs.
fn runs_table(id: &ConnectionId, runs: &[SyncRun], now: i64) -> Markup {
    html! {
        div #runs data-connection=(id) {
            table {
                thead { tr {
                    th { "Run" } th { "Stream" } th { "Kind" } th { "Status" } th { "Started" }
                    th.num { "Duration" } th.num { "Read" } th.num { "Applied" } th.num { "Quarantined" }
                    th.num { "Pages" } th { "Error" }
                } }
                tbody {
                    @for r in runs {
                        tr data-run=(r.id.0) {
                            td { a href=(format!("/ui/runs/{}", r.id.0)) { "#" (r.id.0) } }
                            td { (r.stream) }
                            td { (r.kind.as_str()) }
                            td.status { (run_status(r.status)) }
                            td { (ago(r.started_at, now)) }
                            td.num { (duration(r, now)) }
                            td.num { (r.records_read) }
                            td.num { (r.records_applied) }
                            td.num { (r.records_rejected) }
                            td.num { (r.pages) }
                            td.small { @if let Some(e) = &r.error { (truncate(e, 160)) } }
                        }
                    }
                    @if runs.is_empty() { tr { td colspan="11" { span.muted { "No runs yet." } } } }
                }
            }
        }
    }
}

/// Records read per day as SVG bars (no script: it renders offline and under the CSP).
fn chart(days: &[DailyRunStats], now: i64) -> Markup {
    let today = now - now.rem_euclid(DAY_MS);
    let first = today - (CHART_DAYS - 1) * DAY_MS;
    let mut per_day = vec![(0u64, 0u64); CHART_DAYS as usize];
    for d in days {
        let i = (d.day - first) / DAY_MS;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| per_day.get_mut(i)) {
            slot.0 = slot.0.saturating_add(d.records_read);
            slot.1 = slot.1.saturating_add(d.failed);
        }
    }
    let max = per_day.iter().map(|d| d.0).max().unwrap_or(0).max(1);
    let (w, h, bar) = (700.0_f64, 160.0_f64, 700.0 / CHART_DAYS as f64);
    html! {
        svg #volume-chart viewBox=(format!("0 0 {w} {}", h + 24.0)) width="100%" height="190" role="img" aria-label="Records read per day, last 14 days" {
            @for (i, (records, failed)) in per_day.iter().enumerate() {
                @let x = i as f64 * bar;
                @let bh = (*records as f64 / max as f64) * (h - 16.0);
                @let day = first + i as i64 * DAY_MS;
                g {
                    title { (Utc.timestamp_millis_opt(day).single().map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()) ": " (records) " records" @if *failed > 0 { ", " (failed) " failed runs" } }
                    rect x=(format!("{:.1}", x + 4.0)) y=(format!("{:.1}", h - bh)) width=(format!("{:.1}", bar - 8.0)) height=(format!("{:.1}", bh.max(0.5)))
                        fill=(if *failed > 0 { "#d9534f" } else { "#3b7dd8" }) {}
                    text x=(format!("{:.1}", x + bar / 2.0)) y=(format!("{:.1}", h + 16.0)) text-anchor="middle" font-size="10" fill="#666" {
                        (Utc.timestamp_millis_opt(day).single().map(|t| t.format("%d").to_string()).unwrap_or_default())
                    }
                }
            }
            text x="4" y="12" font-size="11" fill="#666" { "max " (max) " records/day" }
        }
    }
}

/// A run's page with its log lines.
pub(crate) fn run(
    s: &Session,
    r: &SyncRun,
    lines: &[RunLogLine],
    level: Option<LogLevel>,
    now: i64,
) -> Markup {
    let base = format!("/ui/runs/{}", r.id.0);
    let live = r.status == RunStatus::Running;
    layout(
        &format!("Run {}", r.id.0),
        Some(s),
        html! {
            h1 { "Run #" (r.id.0) " " (run_status(r.status)) }
            p { a href=(format!("/ui/connections/{}", r.connection)) { (r.connection) } " / " (r.stream) " · " (r.kind.as_str())
                " · started " (time(r.started_at)) " UTC · " (duration(r, now)) }
            dl.facts {
                dt { "Read" } dd { (r.records_read) }
                dt { "Applied" } dd { (r.records_applied) }
                dt { "Unchanged" } dd { (r.records_unchanged) }
                dt { "Quarantined" } dd { (r.records_rejected) }
                dt { "Pages" } dd { (r.pages) }
            }
            @if let Some(e) = &r.error { p.error #run-error { (e) } }
            h2 { "Log" }
            p.filters {
                "Level: "
                a href=(base) class=[level.is_none().then_some("on")] { "all" }
                @for l in [LogLevel::Error, LogLevel::Warn, LogLevel::Info, LogLevel::Debug] {
                    " " a href=(format!("{base}?level={}", l.as_str())) class=[(level == Some(l)).then_some("on")] { (l.as_str()) " and above" }
                }
            }
            @let log_url = match level { Some(l) => format!("{base}?level={}", l.as_str()), None => base.clone() };
            div #log hx-get=[live.then_some(log_url.as_str())] hx-trigger=[live.then_some("every 2s")] hx-select="#log" hx-swap="outerHTML" {
                @if lines.is_empty() { p.muted { "No log lines captured for this run." } }
                @else {
                    table.log {
                        tbody {
                            @for l in lines {
                                tr class=(format!("lv-{}", l.level.as_str())) {
                                    td.mono.small { (time(l.at)) }
                                    td.small { (l.level.as_str()) }
                                    td.small.muted { (l.target) }
                                    td.mono { (l.message) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The inbox page: counts and dead letters.
pub(crate) fn inbox(s: &Session, c: &InboxCounts, dead: &[DeadLetter], now: i64) -> Markup {
    layout(
        "Inbox",
        Some(s),
        html! {
            h1 { "Webhook inbox" }
            section.tiles {
                div.tile { b { (c.pending) } span { "pending" } }
                div.tile { b { (c.in_flight) } span { "in flight" } }
                div.tile { b { (c.done) } span { "done (kept for retention)" } }
                div.tile { b #dead-count { (c.dead) } span { "dead letters" } }
            }
            h2 { "Dead letters" }
            @if !dead.is_empty() {
                form.inline method="post" action="/ui/dead-letters/retry-all" { (csrf(s)) button #retry-all type="submit" { "Retry all" } }
            }
            table #dead-letters {
                thead { tr { th { "Id" } th { "Platform" } th { "Connection" } th { "Event" } th.num { "Attempts" } th { "Failed" } th { "Last error" } th {} } }
                tbody {
                    @for d in dead {
                        tr data-event=(d.id.0) {
                            td { a href=(format!("/ui/inbox/{}", d.id.0)) { (d.id.0) } }
                            td { (d.event.platform) }
                            td { (d.event.connection) }
                            td.mono.small { (truncate(&d.event.event_id, 40)) }
                            td.num { (d.attempts) }
                            td { (ago(d.failed_at, now)) }
                            td.small { @if let Some(e) = &d.last_error { (truncate(e, 160)) } }
                            td { form.inline method="post" action=(format!("/ui/dead-letters/{}/retry", d.id.0)) { (csrf(s)) button type="submit" { "Retry" } } }
                        }
                    }
                    @if dead.is_empty() { tr { td colspan="8" { span.muted { "No dead letters." } } } }
                }
            }
        },
    )
}

/// Key names whose values are secrets, wherever they appear in a payload or its headers.
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "authorization",
        "signature",
        "api_key",
        "apikey",
        "api-key",
        "cookie",
        "credential",
        "private_key",
        "client_secret",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// The JSON with the values of secret-named keys replaced.
pub(crate) fn redact(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if secret_key(k) {
                        serde_json::Value::String("[redacted]".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// A dead letter's payload, secrets redacted.
pub(crate) fn inbox_event(s: &Session, d: &DeadLetter) -> Markup {
    const SHOWN: usize = 256 * 1024;
    let body = match serde_json::from_slice::<serde_json::Value>(&d.event.body) {
        Ok(v) => serde_json::to_string_pretty(&redact(&v)).unwrap_or_default(),
        Err(_) => format!(
            "(not JSON: {} bytes, not shown, since it cannot be redacted)",
            d.event.body.len()
        ),
    };
    let headers = serde_json::to_string_pretty(&redact(&d.event.headers_json)).unwrap_or_default();
    layout(
        &format!("Event {}", d.id.0),
        Some(s),
        html! {
            h1 { "Dead letter " (d.id.0) }
            p { (d.event.platform) " · " (d.event.connection) " · event " span.mono { (d.event.event_id) } " · " (d.attempts) " attempts · received " (time(d.event.received_at)) " UTC" }
            @if let Some(e) = &d.last_error { p.error { (e) } }
            form.inline method="post" action=(format!("/ui/dead-letters/{}/retry", d.id.0)) { (csrf(s)) button type="submit" { "Retry" } }
            h2 { "Headers" }
            pre #headers { (headers) }
            h2 { "Body" }
            pre #payload { (truncate(&body, SHOWN)) }
        },
    )
}

/// Quarantined records.
pub(crate) fn rejects(
    s: &Session,
    rows: &[StoredReject],
    only: Option<&ConnectionId>,
    now: i64,
) -> Markup {
    layout(
        "Quarantine",
        Some(s),
        html! {
            h1 { "Quarantined records" @if let Some(c) = only { " of " (c) } }
            p.muted { "Records that could not be read or mapped were kept here instead of failing their page. Re-drive them after a fix: each is read, mapped and written again; those that fail stay." }
            form.inline method="post" action="/ui/rejects/retry" {
                (csrf(s))
                @if let Some(c) = only { input type="hidden" name="connection" value=(c); }
                button #redrive type="submit" disabled[rows.is_empty()] { "Re-drive" @if only.is_none() { " all" } }
            }
            table #rejects {
                thead { tr { th { "Id" } th { "Connection" } th { "Stream" } th { "Stage" } th { "Record" } th.num { "Attempts" } th { "Last seen" } th { "Error" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (r.id.0) }
                            td { (r.connection) }
                            td { (r.reject.stream) }
                            td { (r.reject.stage.as_str()) }
                            td.mono.small { @if let Some(id) = &r.reject.id { (id) } }
                            td.num { (r.attempts) }
                            td { (ago(r.last_seen_at, now)) }
                            td.small { (truncate(&r.reject.error, 200)) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="8" { span.muted { "Nothing in quarantine." } } } }
                }
            }
        },
    )
}

fn source_key(k: &apex_connect_identity::SourceKey) -> String {
    format!("{}/{} {} {}", k.platform, k.connection, k.object_type, k.id)
}

fn entity_link(id: apex_connect_identity::CanonicalId) -> Markup {
    html! { a href=(format!("/ui/entities/{}", id.0)) { "#" (id.0) } }
}

/// The entity pages without `[identity]`.
pub(crate) fn identity_off(s: &Session) -> Markup {
    layout(
        "Entities",
        Some(s),
        html! {
            h1 { "Entities" }
            p #identity-off { "Identity resolution is off. Add an " code { "[identity]" } " section to the configuration to resolve the records of every platform into one entity per customer (see the server README)." }
        },
    )
}

/// Find a canonical entity by identity; the latest merges.
pub(crate) fn entities(
    s: &Session,
    kind: &str,
    q: &str,
    found: Option<&[apex_connect_identity::EntitySummary]>,
    error: Option<&str>,
    merges: &[apex_connect_identity::MergeEvent],
    now: i64,
) -> Markup {
    layout(
        "Entities",
        Some(s),
        html! {
            h1 { "Entities" }
            p.muted { "One customer, one entity: find anyone by an email, a phone number, a web domain or a handle, normalized as at ingest." }
            form #find method="get" action="/ui/entities" {
                select name="kind" {
                    @for k in ["email", "phone", "domain", "handle"] {
                        option value=(k) selected[k == kind] { (k) }
                    }
                }
                " "
                input #q type="text" name="q" size="40" value=(q) placeholder="ann@acme.com | +1 415 555 2671 | acme.com | twitter:annlee";
                " "
                button type="submit" { "Find" }
            }
            @if let Some(e) = error { p.error { (e) } }
            @if let Some(found) = found {
                h2 { "Found" }
                table #found {
                    thead { tr { th { "Entity" } th { "Kind" } th { "Name" } th { "Holding it" } } }
                    tbody {
                        @for f in found {
                            tr data-entity=(f.id.0) {
                                td { (entity_link(f.id)) }
                                td { (f.kind) }
                                td { (f.name.as_deref().unwrap_or("—")) }
                                td.small { @for k in &f.matched { div { (source_key(k)) } } }
                            }
                        }
                        @if found.is_empty() { tr { td colspan="4" { span.muted { "Nobody holds it." } } } }
                    }
                }
            }
            h2 { "Latest merges" }
            table #merges {
                thead { tr { th { "When" } th { "Event" } th { "Entity" } th { "Joined by" } th { "Trigger" } } }
                tbody {
                    @for m in merges {
                        tr {
                            td { (ago(m.at, now)) }
                            td { (format!("{:?}", m.kind).to_lowercase()) }
                            td { (entity_link(m.current.unwrap_or(m.cluster))) @if let Some(o) = m.other { " ← " (entity_link(o)) } }
                            td.mono.small { @for k in &m.keys { div { (k) } } }
                            td.small { @if let Some(t) = &m.trigger { (source_key(t)) } }
                        }
                    }
                    @if merges.is_empty() { tr { td colspan="5" { span.muted { "No merges yet." } } } }
                }
            }
        },
    )
}

/// A canonical entity: its fields with each source's value, sources, identities, relations
/// and history.
pub(crate) fn entity(
    s: &Session,
    e: &apex_connect_identity::CanonicalEntity,
    history: &[apex_connect_identity::MergeEvent],
) -> Markup {
    let value = |v: &serde_json::Value| match v {
        serde_json::Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    layout(
        &format!("Entity {}", e.id.0),
        Some(s),
        html! {
            h1 { (e.name.as_deref().unwrap_or("(no name)")) " " span.muted { (e.kind) " #" (e.id.0) } }
            @if e.requested != e.id { p.muted { "#" (e.requested.0) " was merged into this entity." } }
            @if e.truncated { p.muted { "Long lists are cut." } }
            h2 { "Sources" }
            table #sources {
                thead { tr { th { "Source" } th { "Name" } th { "Version" } th { "Synced" } } }
                tbody {
                    @for src in &e.sources {
                        tr {
                            td { (source_key(&src.provenance.source)) }
                            td { (src.name.as_deref().unwrap_or("—")) }
                            td { @if let Some(v) = src.provenance.version { (v) } }
                            td { (time(src.provenance.synced_at)) " UTC" }
                        }
                    }
                }
            }
            h2 { "Fields" }
            table #fields {
                thead { tr { th { "Field" } th { "Value" } th { "From" } th { "Other sources" } } }
                tbody {
                    @for (path, f) in &e.fields {
                        tr {
                            td.mono.small { (path) }
                            td { (truncate(&value(&f.value), 200)) @if f.conflict { " " span.badge.warn { "conflict" } } }
                            td.small { (source_key(&f.provenance.source)) }
                            td.small { @for c in &f.candidates { @if c.provenance.source != f.provenance.source {
                                div { (truncate(&value(&c.value), 80)) span.muted { " · " (c.provenance.source.platform) } }
                            } } }
                        }
                    }
                }
            }
            h2 { "Identities" }
            table #identities {
                thead { tr { th { "Key" } th { "Role" } th { "Asserted by" } } }
                tbody {
                    @for i in &e.identities {
                        tr {
                            td.mono.small { (i.key) }
                            td.small { (format!("{:?}", i.role).to_lowercase()) }
                            td.small { @for ev in &i.asserted_by { div { (source_key(&ev.source)) span.muted { " “" (truncate(&ev.raw, 60)) "”" } } } }
                        }
                    }
                }
            }
            h2 { "Relations" }
            table #relations {
                thead { tr { th { "Relation" } th { "Direction" } th { "Other" } th { "Links" } } }
                tbody {
                    @for r in &e.relations {
                        tr {
                            td { (r.kind) @if r.inferred { span.muted { " (inferred)" } } }
                            td { (format!("{:?}", r.direction).to_lowercase()) }
                            td { @match r.other { Some(o) => { (entity_link(o)) " " span.muted { (r.other_kind.as_deref().unwrap_or("")) } }, None => { span.muted { "not resolved yet" } } } }
                            td.num { (r.count) }
                        }
                    }
                    @if e.relations.is_empty() { tr { td colspan="4" { span.muted { "None." } } } }
                }
            }
            h2 { "History" }
            table #history {
                thead { tr { th { "When" } th { "Event" } th { "Keys" } th { "Trigger" } } }
                tbody {
                    @for m in history {
                        tr {
                            td { (time(m.at)) " UTC" }
                            td { (format!("{:?}", m.kind).to_lowercase()) @if let Some(o) = m.other { " " (entity_link(o)) } }
                            td.mono.small { @for k in &m.keys { div { (k) } } }
                            td.small { @if let Some(t) = &m.trigger { (source_key(t)) } }
                        }
                    }
                }
            }
        },
    )
}

/// The OAuth callback's answer.
pub(crate) fn callback(connection: Option<&ConnectionId>, message: &str) -> Markup {
    let to = connection
        .map(|c| format!("/ui/connections/{c}"))
        .unwrap_or_else(|| "/ui".to_string());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                // A same-site navigation, so the session cookie (SameSite=Strict) is sent again.
                meta http-equiv="refresh" content=(format!("2;url={to}"));
                title { "Authorization · apex-connect" }
                link rel="stylesheet" href="/ui/assets/app.css";
            }
            body { main { section.card.narrow {
                p #callback-message { (message) }
                p { a #continue href=(to) { "Continue" } }
            } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let v = serde_json::json!({
            "type": "message", "access_token": "at-1",
            "nested": [{"Authorization": "Bearer x", "ok": 1, "client_secret": {"a": 1}}],
            "x-front-signature": "sig"
        });
        let r = redact(&v);
        let text = r.to_string();
        for secret in ["at-1", "Bearer x", "\"sig\"", "{\"a\":1}"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert_eq!(r["type"], "message");
        assert_eq!(r["nested"][0]["ok"], 1);
    }

    #[test]
    fn specs_read_like_the_operator_wrote_them() {
        assert_eq!(readable_spec("every 900000ms jitter 0ms"), "every 15m");
        assert_eq!(
            readable_spec("every 60000ms jitter 5000ms"),
            "every 1m jitter 5s"
        );
        assert_eq!(readable_spec("cron 0 */5 * * * *"), "cron 0 */5 * * * *");
    }

    #[test]
    fn times_are_relative_both_ways() {
        assert_eq!(ago(0, 5_000), "5s ago");
        assert_eq!(ago(120_000, 0), "in 2m");
        assert_eq!(ago(0, 2 * DAY_MS), "2d ago");
    }
}
